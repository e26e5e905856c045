"""The protected resource: a file-backed set, fenced or not, with a history of every operation.

Several processes share one :class:`Store` by path. Each operation takes the store's own
``fcntl.flock`` (independent of tenure), reads the state, decides, writes the state, appends one
line to the history and takes its ``time.monotonic_ns()`` stamp while still holding the flock, so
the history's order *is* the store's order.

Fencing rule (:attr:`Store.fenced`): every operation carries the caller's fencing token; the store
refuses any operation whose token is lower than the highest token it has accepted. Reads count
too: a read registers the reader's token, so an old holder cannot slip a write in between a newer
holder's read and its write (Kleppmann's fencing applies to every request, not only writes). A
holder's own write after its own read carries the same token and is accepted. The unfenced twin
applies no rule and accepts everything (it still records the tokens, so the checker can tell
which of its writes were stale).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Store", "StoreOp"]


@dataclass(frozen=True, slots=True)
class StoreOp:
    """One operation as the store saw it (``t``: ``monotonic_ns`` under the store's flock)."""

    t: int
    client: str
    op: str  # "read" | "write"
    token: int
    ok: bool
    element: int | None = None  # the element a write adds
    size: int = 0  # the set's size after the operation

    def to_json(self) -> str:
        return json.dumps(
            {
                "t": self.t,
                "client": self.client,
                "op": self.op,
                "token": self.token,
                "ok": self.ok,
                "element": self.element,
                "size": self.size,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> StoreOp:
        d = json.loads(line)
        return cls(d["t"], d["client"], d["op"], d["token"], d["ok"], d["element"], d["size"])


class Store:
    """A set of ints in ``<directory>/<name>.json``; history in ``<name>.history.jsonl``."""

    def __init__(self, directory: str | Path, *, fenced: bool) -> None:
        self.fenced = fenced
        name = "fenced" if fenced else "unfenced"
        base = Path(directory)
        self._lock_path = base / f"{name}.lock"
        self._state_path = base / f"{name}.json"
        self.history_path = base / f"{name}.history.jsonl"

    def _apply(self, op: str, token: int, client: str, new: list[int] | None) -> list[int] | None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                state = json.loads(self._state_path.read_text())
            except FileNotFoundError:
                state = {"elements": [], "highest": 0}
            ok = not self.fenced or token >= state["highest"]
            if ok:
                state["highest"] = max(state["highest"], token)
                if new is not None:
                    state["elements"] = new
                tmp = self._state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                tmp.replace(self._state_path)
            elements: list[int] = state["elements"]
            record = StoreOp(
                t=time.monotonic_ns(),
                client=client,
                op=op,
                token=token,
                ok=ok,
                element=None if new is None else new[-1],
                size=len(elements),
            )
            with open(self.history_path, "a") as f:
                f.write(record.to_json() + "\n")
            return list(elements) if ok else None
        finally:
            os.close(fd)  # releases the flock

    def read(self, token: int, client: str) -> list[int] | None:
        """The set, or None if the store refuses ``token`` (fenced only)."""
        return self._apply("read", token, client, None)

    def write(self, token: int, client: str, elements: list[int], element: int) -> bool:
        """Replace the set by ``elements + [element]``; False if ``token`` is refused."""
        return self._apply("write", token, client, [*elements, element]) is not None

    def final(self) -> list[int]:
        """The set as it is now (no fencing, no history entry)."""
        try:
            return list(json.loads(self._state_path.read_text())["elements"])
        except FileNotFoundError:
            return []

    def history(self) -> list[StoreOp]:
        if not self.history_path.exists():
            return []
        lines = self.history_path.read_text().splitlines()
        return [StoreOp.from_json(line) for line in lines if line]
