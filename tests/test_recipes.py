"""docs/recipes.md, run: every block marked ``<!-- recipe: ID -->`` there is read from the file
and run here (so the docs cannot drift from what is tested). Only the backend URL and the job
are substituted: a fake ``nightly-report`` / ``my-scheduler`` on PATH records that it ran.

Backends as the recipes name them: cron on Redis, the systemd unit on etcd, the CronJob and the
fencing on PostgreSQL, Celery on Redis; ``tenure elect`` on the file backend. Every wait is
bounded.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tenure
from tests.servers import EtcdCluster, PostgresServer, RedisServer

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
TIMEOUT = 30.0
_BLOCK = re.compile(r"<!-- recipe: (?P<id>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)

# The fake job: append its name and arguments to $RAN_FILE; my-scheduler then waits for TERM.
_JOB = """#!{python}
import os, signal, sys, time
with open(os.environ["RAN_FILE"], "a") as f:
    f.write(" ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[0].endswith("my-scheduler"):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(60)
"""


def recipes() -> dict[str, tuple[str, str]]:
    """Each recipe's language and code, by id."""
    found: dict[str, tuple[str, str]] = {}
    for match in _BLOCK.finditer(RECIPES.read_text()):
        assert match["id"] not in found, f"recipe {match['id']!r} twice in {RECIPES}"
        found[match["id"]] = (match["lang"], match["code"])
    return found


def test_every_recipe_is_tested() -> None:
    tested = {
        "crontab", "systemd-service", "systemd-timer", "kubernetes", "celery-beat",
        "celery-exclusive", "celery-wiring", "elect", "fencing", "fencing-use",
    }  # fmt: skip
    assert set(recipes()) == tested
    # No tested-looking block without its marker (it would silently go untested).
    text = RECIPES.read_text()
    fences = re.findall(r"^```\w+$", text, re.M)
    assert len(fences) == len(tested), "a code block in docs/recipes.md has no recipe marker"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a "host": PATH with tenure and the fake jobs, RAN_FILE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("nightly-report", "my-scheduler"):
        job = bin_dir / name
        job.write_text(_JOB.format(python=sys.executable))
        job.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    return {**clean, "PATH": path, "RAN_FILE": str(tmp_path / "ran"), "PYTHONUNBUFFERED": "1"}


def _ran(env: dict[str, str]) -> list[str]:
    path = Path(env["RAN_FILE"])
    return path.read_text().splitlines() if path.exists() else []


def _namespaced(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}namespace=r{uuid.uuid4().hex[:10]}"


def _run(
    argv: list[str], env: dict[str, str], n: int = 1
) -> list[subprocess.CompletedProcess[str]]:
    """Start ``argv`` on ``n`` "hosts" at once; their results."""
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def test_crontab_runs_the_job_once_across_hosts(
    redis_server: RedisServer, env: dict[str, str]
) -> None:
    _, crontab = recipes()["crontab"]
    settings = dict(
        line.split("=", 1) for line in crontab.splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    assert settings["TENURE_URL"].startswith("redis://")
    [entry] = [line for line in crontab.splitlines() if line[:1].isdigit()]
    command = entry.split(None, 5)[5]  # after the five time fields, as cron runs it: sh -c
    env = {**env, **settings, "TENURE_URL": _namespaced(redis_server.url)}
    results = _run(["/bin/sh", "-c", command], env, n=3)
    assert sorted(r.returncode for r in results) == [0, 75, 75], [r.stderr for r in results]
    assert all(r.stdout == r.stderr == "" for r in results)  # cron would mail any output
    assert _ran(env) == ["nightly-report"]
    # A host whose timer fires late (after the job ended, within --min-hold) skips it too.
    [late] = _run(["/bin/sh", "-c", command], env)
    assert late.returncode == 75
    assert _ran(env) == ["nightly-report"]


def test_systemd_units(etcd_server: EtcdCluster, env: dict[str, str]) -> None:
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str  # type: ignore[assignment,method-assign]
    service.read_string(recipes()["systemd-service"][1])
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read_string(recipes()["systemd-timer"][1])
    unit = service["Service"]
    assert unit["Type"] == "oneshot"
    assert unit["SuccessExitStatus"] == "75"
    name, _, value = unit["Environment"].partition("=")
    assert name == "TENURE_URL"
    assert value.startswith("etcd://")
    argv = shlex.split(unit["ExecStart"])  # systemd splits ExecStart= like a shell, no shell
    min_hold = float(argv[argv.index("--min-hold") + 1])
    # The hold must cover the timer's randomized spread, or two hosts could both run the job.
    assert float(timer["Timer"]["RandomizedDelaySec"]) < min_hold
    assert timer["Timer"]["OnCalendar"]
    env = {**env, "TENURE_URL": _namespaced(etcd_server.url)}
    [first] = _run(argv, env)
    assert first.returncode == 0, first.stderr
    [second] = _run(argv, env)
    assert second.returncode == 75  # SuccessExitStatus: not a failed unit
    assert second.stderr == ""
    assert _ran(env) == ["nightly-report"]


def test_kubernetes_cronjob(postgres_server: PostgresServer, env: dict[str, str]) -> None:
    _, manifest = recipes()["kubernetes"]
    assert re.search(r"^\s+concurrencyPolicy: Forbid\b", manifest, re.M)
    found = re.search(r"command: (\[.*?\])", manifest, re.S)
    assert found is not None
    command: list[str] = json.loads(found[1])
    url = re.search(r"value: (postgresql://\S+)", manifest)
    assert url is not None
    env = {**env, "TENURE_URL": _namespaced(postgres_server.url)}
    results = _run(command, env, n=2)  # two clusters' Jobs at once
    assert sorted(r.returncode for r in results) == [0, 75]
    assert _ran(env) == ["nightly-report"]


def _host(code: str, url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run a recipe's module code as one "host" would (``$TENURE_URL`` set); its namespace."""
    monkeypatch.setenv("TENURE_URL", url)
    namespace: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(code, str(RECIPES), "exec"), namespace)  # (our own docs)
    return namespace


def test_celery_beat_on_two_hosts(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, code = recipes()["celery-beat"]
    url = _namespaced(redis_server.url)
    a, b = _host(code, url, monkeypatch), _host(code, url, monkeypatch)
    try:
        assert a["send_digest"]() == "sent"  # host A's beat: runs it
        assert b["send_digest"]() is None  # host B's beat, seconds later: kept by min_hold
        assert a["send_digest"]() is None
        held = a["client"].holder("celery/send-digest")
        assert held is not None
        assert held.ended
    finally:
        a["client"].close()
        b["client"].close()


def test_celery_task_never_runs_twice_at_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, code = recipes()["celery-exclusive"]
    url = _namespaced(redis_server.url)
    a, b = _host(code, url, monkeypatch), _host(code, url, monkeypatch)
    try:
        assert a["reindex"](1) == 1
        assert b["reindex"](2) == 2  # one after the other: fine (no min_hold)
        # A run in progress on host A: Celery's autoretry_for retries B's later.
        with a["client"].lock("celery/reindex"), pytest.raises(tenure.AcquireTimeoutError):
            b["reindex"](3)
        assert b["reindex"](3) == 3
    finally:
        a["client"].close()
        b["client"].close()


def test_celery_wiring_compiles() -> None:
    _, code = recipes()["celery-wiring"]
    compile(code, str(RECIPES), "exec")
    assert "autoretry_for=(tenure.AcquireTimeoutError,)" in code


def test_elect_active_standby(tmp_path: Path, env: dict[str, str]) -> None:
    _, command = recipes()["elect"]
    url = f"file://{tmp_path / 'locks'}"
    env = {**env, "TENURE_URL": url}
    hosts = [
        subprocess.Popen(["/bin/sh", "-c", command], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        with tenure.connect(url) as client:
            election = client.election("scheduler")
            _wait(lambda: len(election.candidates()) == 2 and len(_ran(env)) == 1, "a standby")
            assert _ran(env) == ["my-scheduler --listen 0.0.0.0:8080"]
            leader = election.leader()
            assert leader is not None
            assert leader.value == os.uname().nodename
            # The active host goes away: the standby takes over and starts its own.
            active = next(h for h in hosts if h.pid in _tree_pids(leader.pid))
            os.killpg(active.pid, signal.SIGTERM)
            active.communicate(timeout=TIMEOUT)
            _wait(lambda: len(_ran(env)) == 2, "the standby to take over")
            new = election.leader()
            assert new is not None
            assert new.pid != leader.pid
    finally:
        for host in hosts:
            if host.poll() is None:
                os.killpg(host.pid, signal.SIGTERM)
            host.communicate(timeout=TIMEOUT)


def _tree_pids(pid: int) -> set[int]:
    """``pid`` and its ancestors (the shell that runs the recipe's ``tenure elect``)."""
    found = {pid}
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rpartition(")")[2].split()[1])
        found.add(pid)
    return found


def _wait(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_fencing_a_postgresql_write(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = f"recipe_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    database_url = f"{postgres_server.url}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("TENURE_URL", _namespaced(postgres_server.url))
    namespace: dict[str, Any] = {"__name__": "recipe", "DATABASE_URL": database_url}
    for recipe in ("fencing", "fencing-use"):  # the second continues the first
        exec(compile(recipes()[recipe][1], str(RECIPES), "exec"), namespace)
    write_report, stale = namespace["write_report"], namespace["StaleTokenError"]
    with tenure.connect() as client, psycopg.connect(database_url, autocommit=True) as conn:
        [(body, written)] = conn.execute("SELECT body, token FROM reports").fetchall()
        assert body == "all green"
        # A holder paused past its TTL wakes up after a newer holder wrote: refused.
        paused = client.lock("reports/nightly")
        with paused:
            old = paused.token
        newer = client.lock("reports/nightly")
        with newer:
            token = newer.token
            write_report(conn, token, "2026-12-08", "new")
            write_report(conn, token, "2026-12-08", "newer")  # >=: again, same token
        assert written < old < token
        with pytest.raises(stale):
            write_report(conn, old, "2026-12-08", "stale")
        rows = conn.execute("SELECT day::text, body, token FROM reports ORDER BY day").fetchall()
        assert rows == [("2026-12-07", "all green", written), ("2026-12-08", "newer", token)]
