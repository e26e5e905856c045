"""An in-process fenced resource for the backend tests (the fault suite's is a file-backed
store shared by processes: tests/faults/resource.py)."""

from __future__ import annotations

import threading


class FencedResource:
    """Accepts a write only with a token above every token it has seen."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.last = 0
        self.accepted: list[int] = []
        self.rejected: list[int] = []

    def write(self, token: int) -> bool:
        with self._guard:
            if token <= self.last:
                self.rejected.append(token)
                return False
            self.last = token
            self.accepted.append(token)
            return True
