"""Text helpers for bindings."""

from __future__ import annotations


class StopTextBuffer:
    """Holds back text that may be the start of a stop sequence; cuts at the first stop.

    Text bindings feed it decoded pieces; what it returns is safe to stream.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit, whether a stop sequence was reached)."""
        self.pending += piece
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        found = [position for position in (self.pending.find(stop) for stop in self.stops) if position >= 0]
        if found:
            out, self.pending = self.pending[: min(found)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:size]):
                    hold = size
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
