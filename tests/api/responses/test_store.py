"""Stored responses in the jobs database: per key, expiring, bounded per key."""

from __future__ import annotations

from pathlib import Path

from lollms_server.api.responses.store import ResponseStore
from lollms_server.core.jobs.store import engine_for


def store_in(tmp_path: Path, ttl: float = 60.0, bound: int = 10) -> ResponseStore:
    return ResponseStore(engine_for(f"sqlite:///{tmp_path / 'jobs.db'}"), ttl, bound)


def test_a_response_is_read_back_by_its_key_only(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    items = [{"type": "message", "role": "user", "content": "hi"}]
    store.put("alice", {"id": "resp_1", "status": "completed"}, items)
    found = store.get("alice", "resp_1")
    assert found is not None and found.response["status"] == "completed" and found.items == items
    assert store.get("bob", "resp_1") is None
    assert store.get("alice", "resp_2") is None
    assert not store.delete("bob", "resp_1")
    assert store.delete("alice", "resp_1") and store.get("alice", "resp_1") is None


def test_expired_responses_are_gone(tmp_path: Path) -> None:
    store = store_in(tmp_path, ttl=-1.0)
    store.put("alice", {"id": "resp_1"}, [])
    assert store.get("alice", "resp_1") is None


def test_each_key_keeps_its_newest_responses_only(tmp_path: Path) -> None:
    store = store_in(tmp_path, bound=2)
    for index in range(4):
        store.put("alice", {"id": f"resp_{index}"}, [])
    store.put("bob", {"id": "resp_bob"}, [])
    assert [store.get("alice", f"resp_{index}") is not None for index in range(4)] == [
        False,
        False,
        True,
        True,
    ]
    assert store.get("bob", "resp_bob") is not None
