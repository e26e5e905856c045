"""One worker process of ``tenure demo`` (run as ``python -m tenure.cli._demo_worker``).

Reads a JSON job from argv, prints ``ready``, waits for a line on stdin (so all workers start
together), does its increments, and prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import tenure

__all__ = ["main"]

#: Every this many increments, a tiny random sleep (at most 1 ms) so that races show up.
_NAP_EVERY = 4


def _read_int(path: Path) -> int:
    text = path.read_text().strip()
    return int(text) if text else 0


def _write_int(path: Path, value: int) -> None:
    # Atomic replace: a reader sees the old or the new number, never half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def _pause(i: int, rng: random.Random) -> None:
    if i % _NAP_EVERY == 0:
        time.sleep(rng.uniform(0, 0.001))
    else:
        time.sleep(0)


def run(job: dict[str, Any]) -> dict[str, Any]:
    counter = Path(job["counter"])
    token_file = counter.with_name(counter.name + ".token")
    increments = int(job["increments"])
    rng = random.Random()
    out: dict[str, Any] = {"pid": os.getpid(), "violations": 0, "tokens": 0}
    if not job["locked"]:
        for i in range(increments):
            value = _read_int(counter)
            _pause(i, rng)
            _write_int(counter, value + 1)
        return out
    options: dict[str, Any] = {}
    if job.get("namespace") is not None:
        options["namespace"] = job["namespace"]
    with tenure.connect(job["url"], **options) as client:
        lock = client.lock(job["lock"])
        for i in range(increments):
            with lock:
                token = lock.token
                last = _read_int(token_file)
                if token <= last:
                    out["violations"] += 1
                value = _read_int(counter)
                _pause(i, rng)
                _write_int(counter, value + 1)
                _write_int(token_file, token)
                out["tokens"] += 1
    return out


def main() -> int:
    job = json.loads(sys.argv[1])
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 1  # the parent went away
    try:
        result = run(job)
    except (tenure.TenureError, OSError, ValueError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
