"""Text helpers for bindings."""

from __future__ import annotations


class StopTextBuffer:
    """Holds back text that may be the start of a stop sequence; cuts at the first stop.

    Text bindings feed it decoded pieces; what it returns is safe to stream. The stops form an
    Aho-Corasick automaton: each character moves one state (amortized constant time, whatever the
    number or length of the stops), and the state's depth is exactly the text to hold back (the
    longest end of the text that begins a stop). A stop is found at the character that ends it
    (the longest stop ending there), so the result does not depend on how the text is split.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in dict.fromkeys(stops) if stop]
        self.pending = ""  # the current state's text: what may still begin a stop
        self._children: list[dict[str, int]] = [{}]
        self._fail = [0]
        self._depth = [0]
        self._match = [0]  # length of the longest stop that ends at this state, 0 for none
        self._state = 0
        for stop in self.stops:
            self._insert(stop)
        self._link()

    def _insert(self, stop: str) -> None:
        node = 0
        for char in stop:
            child = self._children[node].get(char)
            if child is None:
                child = len(self._children)
                self._children[node][char] = child
                self._children.append({})
                self._fail.append(0)
                self._depth.append(self._depth[node] + 1)
                self._match.append(0)
            node = child
        self._match[node] = len(stop)

    def _link(self) -> None:
        """Failure links, breadth first: the longest proper end of a state that is a state."""
        queue = list(self._children[0].values())
        for node in queue:
            for char, child in self._children[node].items():
                fallback = self._fail[node]
                while fallback and char not in self._children[fallback]:
                    fallback = self._fail[fallback]
                target = self._children[fallback].get(char, 0)
                self._fail[child] = target if target != child else 0
                if not self._match[child]:
                    self._match[child] = self._match[self._fail[child]]
                queue.append(child)

    def push(self, piece: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit, whether a stop sequence was reached)."""
        if not self.stops:
            out, self.pending = self.pending + piece, ""
            return out, False
        children, fail, match = self._children, self._fail, self._match
        state = self._state
        for index, char in enumerate(piece):
            while state and char not in children[state]:
                state = fail[state]
            state = children[state].get(char, 0)
            if match[state]:
                text = self.pending + piece[: index + 1]
                self.pending, self._state = "", 0
                return text[: len(text) - match[state]], True
        self._state = state
        text = self.pending + piece
        cut = len(text) - self._depth[state]
        out, self.pending = text[:cut], text[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending, self._state = self.pending, "", 0
        return out
