"""The protected resources: a file-backed set, fenced or not, and a pool; histories of every op.

Several processes share one :class:`Store` (or :class:`Pool`) by path. Each operation takes the
store's own ``fcntl.flock`` (independent of tenure), reads the state, decides, writes the state,
appends one line to the history and takes its ``time.monotonic_ns()`` stamp while still holding
the flock, so the history's order *is* the store's order.

Fencing rule (:attr:`Store.fenced`): every operation carries the caller's fencing token; the store
refuses any operation whose token is lower than the highest token it has accepted. Reads count
too: a read registers the reader's token, so an old holder cannot slip a write in between a newer
holder's read and its write (Kleppmann's fencing applies to every request, not only writes). A
holder's own write after its own read carries the same token and is accepted. The unfenced twin
applies no rule and accepts everything (it still records the tokens, so the checker can tell
which of its writes were stale).

The rwlock rule (DESIGN §8) is the same store with one more operation: a writer reads and writes
exactly as a lock holder does (*exclusive* operations: a token below the highest the store has
seen is refused), and a reader's :meth:`Store.shared_read` is refused only below the highest
*exclusive* token seen, so concurrent readers, whose tokens differ, never refuse each other,
while a reader whose grant predates a writer's is refused once that writer has touched the store.
A writer's read counts as exclusive: it is made under the exclusive grant, so a reader older
than it is already stale. A lock workload has no shared reads, so for it the two highs are equal
and the rule is the one above.

A semaphore has no such fence: with N concurrent holders, tokens order the grants, not who still
holds one. With limit 2, holders of tokens 1 and 3 may be live while 2 (between them) was paused
past its TTL and replaced by 3; or 2 released and 1 is the one that expired: a store that knows
only the tokens (or the highest N of them) cannot tell the live holder from the stale one, so any
rule refuses a live holder or admits a stale one. What a semaphore protects is a capacity, so
its resource is a :class:`Pool`: holders check in (``occupy``) and out (``vacate``) with their
token, it counts the occupants in its own order and refuses nothing; the checker reads its
occupancy against the limit (an independent, single-clock view of the excess). A client the
nemesis kills is evicted by the controller (a real service sees the connection close).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pool", "Store", "StoreOp"]


@dataclass(frozen=True, slots=True)
class StoreOp:
    """One operation as the store saw it (``t``: ``monotonic_ns`` under the store's flock)."""

    t: int
    client: str
    op: str  # Store: "read" | "write" | "shared-read"; Pool: "occupy" | "vacate" | "evict"
    token: int
    ok: bool
    element: int | None = None  # the element a write adds
    size: int = 0  # the set's size after the operation (Pool: the occupants after it)

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
                state = {"elements": [], "highest": 0, "exclusive": 0}
            shared = op == "shared-read"
            ok = not self.fenced or token >= state["exclusive" if shared else "highest"]
            if ok:
                state["highest"] = max(state["highest"], token)
                if not shared:
                    state["exclusive"] = max(state["exclusive"], token)
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

    def shared_read(self, token: int, client: str) -> list[int] | None:
        """An rwlock reader's read: refused (fenced only) below the highest exclusive token."""
        return self._apply("shared-read", token, client, None)

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


class Pool:
    """The occupants of a capacity (``<directory>/pool.json``); history in ``pool.history.jsonl``.

    No fence (see the module docstring): every operation is accepted and recorded with the
    number of occupants after it, in the pool's own order (its flock).
    """

    def __init__(self, directory: str | Path) -> None:
        base = Path(directory)
        self._lock_path = base / "pool.lock"
        self._state_path = base / "pool.json"
        self.history_path = base / "pool.history.jsonl"

    def _apply(self, op: str, token: int, client: str) -> None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                occupants: dict[str, int] = json.loads(self._state_path.read_text())
            except FileNotFoundError:
                occupants = {}
            if op == "occupy":
                occupants[client] = token
            else:
                occupants.pop(client, None)
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(occupants))
            tmp.replace(self._state_path)
            record = StoreOp(time.monotonic_ns(), client, op, token, True, None, len(occupants))
            with open(self.history_path, "a") as f:
                f.write(record.to_json() + "\n")
        finally:
            os.close(fd)  # releases the flock

    def occupy(self, token: int, client: str) -> None:
        self._apply("occupy", token, client)

    def vacate(self, token: int, client: str) -> None:
        self._apply("vacate", token, client)

    def evict(self, client: str) -> None:
        """The controller's, for a client it killed."""
        self._apply("evict", 0, client)

    def history(self) -> list[StoreOp]:
        if not self.history_path.exists():
            return []
        lines = self.history_path.read_text().splitlines()
        return [StoreOp.from_json(line) for line in lines if line]
