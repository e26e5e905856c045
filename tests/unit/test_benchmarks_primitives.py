"""The benchmarks' rwlock/semaphore harness: its promise check, and one tiny run on files.

No figure is asserted (performance lives in benchmarks/, never in wall-clock tests): only that
the harness runs, reports every row (measured, or "n/a (not supported)"), and saw no violation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks._impls import Target
from benchmarks._primitives import TENURE, SharedArgs, _inside
from benchmarks._workers import Slots

ROOT = Path(__file__).resolve().parents[2]


def _args(roles: list[bool], limit: int = 0) -> SharedArgs:
    lib = TENURE.library("read")
    workers = tuple((lib, exclusive, "write" if exclusive else "read") for exclusive in roles)
    return SharedArgs(workers, Target("file", "file:///x"), "n", 1.0, 10, limit=limit)


def _slots(args: SharedArgs, inside: list[int]) -> list[int]:
    shared = [0] * args.slots
    for i in inside:
        shared[Slots.SIZE + i] = 1
    return shared


def test_promise_check_readers_writer_and_limit() -> None:
    rw = _args([True, False, False])
    assert _inside(rw, _slots(rw, [1, 2]), 1, False) == (2, False)  # readers together: fine
    assert _inside(rw, _slots(rw, [0]), 0, True) == (1, False)  # a writer alone: fine
    assert _inside(rw, _slots(rw, [0, 2]), 2, False) == (2, True)  # reader beside the writer
    assert _inside(rw, _slots(rw, [0, 2]), 0, True) == (2, True)  # writer not alone
    sem = _args([False, False, False], limit=2)
    assert _inside(sem, _slots(sem, [0, 1]), 0, False) == (2, False)
    assert _inside(sem, _slots(sem, [0, 1, 2]), 0, False) == (3, True)  # more than the limit


def test_primitives_smoke_run_on_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--primitives", "--quick", "--backends", "file",
         "--libraries", "tenure", "--duration", "0.3", "--iterations", "20",
         "--rw-readers", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "latest.json").exists()  # a partial run never replaces latest.*
    result = json.loads((tmp_path / "primitives.json").read_text())
    prim = result["backends"]["file"]["primitives"]
    rows = result["backends"]["file"]["rounds"][0]["primitives"]["contended"]
    assert set(rows) == set(prim["scenarios"])
    for key, row in rows.items():
        assert "unsupported" in row or row["overlaps"] == 0, (key, row)
        assert "error" not in row, (key, row)
    md = (tmp_path / "primitives.md").read_text()
    assert "### rwlock and semaphore" in md
    assert "rwlock readers only, 8 processes" in md
