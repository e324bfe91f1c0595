"""Stored responses (``store: true``): one table in the jobs database (SQLite or PostgreSQL),
through the jobs store's SQLAlchemy engine, so every gateway sharing that database shares them.

A row keeps the response object (``GET /v1/responses/{id}``) and the conversation it ended
(its input items and output items), which ``previous_response_id`` continues. Rows belong to the
key that made them (another key's id is a 404 like an unknown one), expire after
``jobs.responses_ttl_hours`` and are bounded per key (``jobs.max_responses_per_key``: the oldest
go first). Every method blocks: callers run them with :meth:`JobStore.call`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, Text, delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

metadata = MetaData()
responses_table = Table(
    "lollms_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(256), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("response_json", Text, nullable=False),
    Column("items_json", Text, nullable=False),
)


@dataclass(frozen=True)
class StoredResponse:
    id: str
    owner: str
    response: dict[str, Any]
    items: list[dict[str, Any]]
    """The whole conversation up to and including this response's output items."""


class ResponseStore:
    """Create, read and delete stored responses (blocking methods)."""

    def __init__(self, engine: Engine, ttl_seconds: float, max_per_key: int) -> None:
        self.engine = engine
        self.ttl_seconds = ttl_seconds
        self.max_per_key = max_per_key
        self._schema_lock = threading.Lock()
        self._schema = False

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema:
                return
            try:
                metadata.create_all(self.engine)
            except SQLAlchemyError:  # another server created it at the same moment
                time.sleep(0.5)
                metadata.create_all(self.engine)
            self._schema = True

    def put(self, owner: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Store a finished response; drop expired rows and this key's oldest beyond its bound."""
        self._ensure_schema()
        now = time.time()
        table = responses_table.c
        with self.engine.begin() as connection:
            connection.execute(delete(responses_table).where(table.expires_at < now))
            connection.execute(
                insert(responses_table).values(
                    id=response["id"],
                    owner=owner,
                    created_at=now,
                    expires_at=now + self.ttl_seconds,
                    response_json=json.dumps(response),
                    items_json=json.dumps(items),
                )
            )
            kept = (
                select(table.id)
                .where(table.owner == owner)
                .order_by(table.created_at.desc(), table.id.desc())
                .limit(self.max_per_key)
            )
            connection.execute(
                delete(responses_table).where(table.owner == owner, table.id.not_in(kept.scalar_subquery()))
            )

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The key's response ``response_id`` (None: unknown, expired or another key's)."""
        self._ensure_schema()
        table = responses_table.c
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    select(responses_table).where(
                        table.id == response_id, table.owner == owner, table.expires_at >= time.time()
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return StoredResponse(
            row["id"], row["owner"], json.loads(row["response_json"]), json.loads(row["items_json"])
        )

    def delete(self, owner: str, response_id: str) -> bool:
        self._ensure_schema()
        table = responses_table.c
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(responses_table).where(table.id == response_id, table.owner == owner)
            )
        return bool(result.rowcount)
