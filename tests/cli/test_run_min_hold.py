"""``tenure run --min-hold``: the cron case, run as real subprocesses (every wait bounded).

Several "replicas" start the same job with ``--no-wait --min-hold``: exactly one runs it, every
other exits 75 without output (cron mails any output), and the lock stays taken after the
winner's CMD and tenure itself have exited, until min_hold after the grant.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import tenure
from tenure.cli import main

from .test_cli import TENURE, TIMEOUT, _env, tenure_cli, wait_for

# The job: append one line to argv[1].
JOB = "import sys; open(sys.argv[1], 'a').write('ran\\n')"


def _replicas(url: str, ran: Path, n: int, hold: float) -> list[subprocess.CompletedProcess[str]]:
    argv = [*TENURE, "run", "reports/nightly", "--url", url, "--no-wait", "--min-hold",
            str(hold), "--", sys.executable, "-c", JOB, str(ran)]  # fmt: skip
    procs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        for _ in range(n)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_no_wait_min_hold_runs_the_job_once_across_replicas(tmp_path: Path) -> None:
    # (On Redis, etcd and PostgreSQL: tests/test_recipes.py runs the crontab, the systemd unit
    # and the CronJob recipes the same way.)
    any_url = f"file://{tmp_path / 'locks'}"
    ran = tmp_path / "ran"
    results = _replicas(any_url, ran, n=3, hold=8)
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 75, 75], [(r.returncode, r.stderr) for r in results]
    assert ran.read_text() == "ran\n"
    assert all(r.stderr == "" and r.stdout == "" for r in results)  # silent, for cron
    # Every tenure process has exited: the lock is still taken (the server keeps it)...
    with tenure.connect(any_url) as client:
        held = client.holder("reports/nightly")
        assert held is not None
        assert held.ended
    status = tenure_cli("status", "reports/nightly", "--url", any_url)
    assert "holder (ended)" in status.stdout, status.stdout
    # ... so a replica whose timer fires late skips it too; -v says why.
    late = tenure_cli("run", "reports/nightly", "--url", any_url, "--no-wait", "--min-hold",
                      "8", "-v", "--", sys.executable, "-c", JOB, str(ran))  # fmt: skip
    assert late.returncode == 75
    assert "kept" in late.stderr
    assert "--min-hold" in late.stderr
    assert ran.read_text() == "ran\n"


def test_after_min_hold_the_job_runs_again(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'locks'}"
    ran = tmp_path / "ran"
    first = tenure_cli("run", "job", "--url", url, "--no-wait", "--min-hold", "1", "--",
                       sys.executable, "-c", JOB, str(ran))  # fmt: skip
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    with tenure.connect(url) as client:
        wait_for(lambda: client.holder("job") is None, "the hold to end", timeout=10)
    assert time.monotonic() - started < 1 + 5
    again = tenure_cli("run", "job", "--url", url, "--no-wait", "--min-hold", "1", "--",
                       sys.executable, "-c", JOB, str(ran))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert ran.read_text() == "ran\nran\n"


def test_no_wait_without_min_hold_still_says_why(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'locks'}"
    with tenure.connect(url) as client, client.lock("job"):
        busy = tenure_cli("run", "job", "--url", url, "--no-wait", "--", "true")
    assert busy.returncode == 75
    assert "not running CMD (--no-wait)" in busy.stderr


@pytest.mark.parametrize("bad", ["-1", "soon", "inf"])
def test_bad_min_hold_exits_64(
    tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path / 'locks'}"
    assert main(["run", "job", "--url", url, "--min-hold", bad, "--", "true"]) == 64
    assert "--min-hold" in capsys.readouterr().err
