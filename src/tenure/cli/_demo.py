"""``tenure demo``: N processes increment one shared counter file, without and with the lock."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import CLIError, connect, shown_url

__all__ = ["LOCK_NAME", "cmd_demo"]

LOCK_NAME = "tenure-demo/counter"


def cmd_demo(args: argparse.Namespace) -> int:
    # Connect once here: a bad URL fails fast with a clear message, and we learn the redacted URL.
    with connect(args.url, args.namespace) as client:
        url_shown = shown_url(client)
    processes: int = args.processes
    increments: int = args.increments
    expected = processes * increments
    with tempfile.TemporaryDirectory(prefix="tenure-demo-") as tmp:
        unlocked = _phase(Path(tmp) / "unlocked", args, locked=False)
        locked = _phase(Path(tmp) / "locked", args, locked=True)
    lost = expected - unlocked["total"]
    violations = sum(w["violations"] for w in locked["workers"])
    exact = locked["total"] == expected
    ok = exact and violations == 0
    if args.json:
        print(
            json.dumps(
                {
                    "url": url_shown,
                    "processes": processes,
                    "increments": increments,
                    "expected": expected,
                    "without_lock": {
                        "total": unlocked["total"],
                        "lost_updates": lost,
                        "seconds": round(unlocked["seconds"], 3),
                    },
                    "with_lock": {
                        "total": locked["total"],
                        "exact": exact,
                        "token_violations": violations,
                        "tokens_strictly_increasing": violations == 0,
                        "seconds": round(locked["seconds"], 3),
                    },
                    "ok": ok,
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    print(f"{processes} processes x {increments} increments of one counter file = {expected}")
    print(
        f"without a lock: {unlocked['total']} / {expected}  "
        + (f"({lost} updates lost)" if lost else "(no updates lost this time: races are luck)")
        + f"  {unlocked['seconds']:.2f} s"
    )
    if exact and violations == 0:
        verdict = "(exact; tokens strictly increasing)"
    elif exact:
        verdict = f"(exact, but {violations} fencing tokens did not increase!)"
    else:
        verdict = f"({expected - locked['total']} updates lost: MUTUAL EXCLUSION FAILED)"
    print(
        f"with tenure:    {locked['total']} / {expected}  {verdict}  "
        f"{locked['seconds']:.2f} s   [{url_shown}]"
    )
    return 0 if ok else 1


def _phase(directory: Path, args: argparse.Namespace, *, locked: bool) -> dict[str, Any]:
    directory.mkdir()
    counter = directory / "counter"
    counter.write_text("0\n")
    (directory / "counter.token").write_text("0\n")
    job = json.dumps(
        {
            "counter": str(counter),
            "increments": args.increments,
            "locked": locked,
            "url": args.url,
            "namespace": args.namespace,
            "lock": LOCK_NAME,
        }
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tenure.cli._demo_worker", job],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(args.processes)
    ]
    try:
        for worker in workers:  # wait until every worker has started, then start them together
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise CLIError("a demo worker failed to start", 1)
        started = time.monotonic()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results: list[dict[str, Any]] = []
        for worker in workers:
            out, _ = worker.communicate(timeout=None)
            line = out.strip().splitlines()[-1] if out.strip() else "{}"
            result = json.loads(line)
            if "error" in result or worker.returncode != 0:
                raise CLIError(f"a demo worker failed: {result.get('error', 'see above')}", 1)
            results.append(result)
        seconds = time.monotonic() - started
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return {"total": int(counter.read_text().strip()), "seconds": seconds, "workers": results}
