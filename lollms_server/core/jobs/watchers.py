"""Open job event streams per API key: a cap, so one key cannot hold thousands of watchers that
each read the database twice a second (``[jobs] max_watchers_per_key``)."""

from __future__ import annotations

from lollms_server.core.errors import RateLimitError


class Watchers:
    """Counts of open event streams by key name (a name leaves the map when its last stream
    closes: nothing keyed by requests stays)."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.open: dict[str, int] = {}

    def enter(self, key: str) -> None:
        """One more stream for ``key`` (429 when it already holds ``per_key``)."""
        held = self.open.get(key, 0)
        if held >= self.per_key:
            raise RateLimitError(
                f"This key has {held} job event streams open; the limit is {self.per_key} "
                "([jobs] max_watchers_per_key). Close one, or poll GET /api/v1/jobs/{id}.",
                limit=self.per_key,
                remaining=0,
                reset_seconds=5,
                reason="watchers",
            )
        self.open[key] = held + 1

    def leave(self, key: str) -> None:
        held = self.open.get(key, 0) - 1
        if held > 0:
            self.open[key] = held
        else:
            self.open.pop(key, None)
