"""The benchmarks' asyncio rows (``tenure aio``): one tiny run on files, no server.

No figure is asserted (performance lives in benchmarks/, never in wall-clock tests): only that
the asyncio measurements run inside an event loop, report the same shape as the sync rows, and
saw no overlap in the critical section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks._impls import Target
from benchmarks._workers import Slots, _critical_section, uncontended_async
from benchmarks.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[2]


def test_every_backend_with_tenure_has_an_aio_twin() -> None:
    for name, backend in BACKENDS.items():
        keys = {lib.key: lib for lib in backend.libraries}
        assert "tenure-aio" in keys, name
        aio = keys["tenure-aio"]
        assert aio.is_async, name
        assert aio.twin == "tenure", name
        assert not keys["tenure"].is_async, name
        # A backend without an asyncio floor says why (its aio row uses the sync floor).
        assert backend.afloor is not None or backend.afloor_label.startswith("none"), name


def test_uncontended_async_on_files(tmp_path: Path) -> None:
    backend = BACKENDS["file"]
    lib = next(lib for lib in backend.libraries if lib.key == "tenure-aio")
    target = Target("file", f"file://{tmp_path}?namespace=t", directory=str(tmp_path))
    raw = uncontended_async(lib, backend.floor, backend.afloor, target, "u", 120, 20.0, 5)
    assert set(raw) == {"lock", "lock_cpu", "floor", "floor_cpu"}  # file: no asyncio floor
    assert len(raw["lock"]) == len(raw["floor"]) == 120
    assert all(s > 0 for s in raw["lock"] + raw["floor"])
    assert raw["lock_cpu"][0] > 0
    assert raw["floor_cpu"][0] > 0


def test_critical_section_counts_an_intruder() -> None:
    shared = [0] * Slots.SIZE
    result: dict[str, object] = {
        "grants": 0, "grants_in_window": 0, "overlaps": 0, "self_reacquire": 0,
        "handoffs_ns": [],
    }  # fmt: skip
    _critical_section(1, 10, 100, shared, result)
    assert result["overlaps"] == 0
    assert shared[Slots.COUNTER] == 1
    shared[Slots.INSIDE] = 2  # another worker is inside: must show
    _critical_section(1, 20, 100, shared, result)
    assert result["overlaps"] == 1
    assert result["self_reacquire"] == 1


def test_aio_rows_smoke_run_on_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--no-primitives", "--rounds", "1", "--backends",
         "file", "--libraries", "tenure,tenure-aio", "--duration", "0.5", "--iterations", "50",
         "--procs", "4", "--no-chart", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    section = result["backends"]["file"]
    assert section["libraries"]["tenure-aio"]["async"] is True
    assert section["libraries"]["tenure-aio"]["twin"] == "tenure"
    rnd = section["rounds"][0]
    unc = rnd["uncontended"]["tenure-aio"]
    assert unc["n"] == 50, unc
    assert unc["p50_us"] > 0, unc
    assert unc["floor_p50_us"] > 0, unc
    assert "afloor_p50_us" not in unc  # the file backend has no asyncio floor
    for key in ("tenure", "tenure-aio"):
        row = rnd["contended"][key]["4"]
        assert row["workers_reported"] == 4, (key, row)
        assert row["errors"] == 0, (key, row)
        assert row["overlaps"] == 0, (key, row)
        assert row["grants_total"] > 0, (key, row)
        assert row["handoffs"] > 0, (key, row)
    twins = section["summary"]["twins"]["tenure-aio"]["4"]
    assert twins["throughput"]["median"] > 0
    aio_targets = [t for t in result["targets"] if t["what"].startswith("tenure aio")]
    assert len(aio_targets) == 3  # overlaps, uncontended vs floor, throughput vs sync at 4
    md = (tmp_path / "latest.md").read_text()
    assert "### asyncio rows: against the asyncio floor and the sync twin" in md
