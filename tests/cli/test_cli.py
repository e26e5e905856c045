"""The ``tenure`` command line, run as real subprocesses on the file backend (no server).

Every wait is bounded: subprocess waits have timeouts, and conditions are polled with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import tenure
from tenure.cli import main
from tests.servers import EtcdCluster, PostgresServer, RedisServer

TIMEOUT = 30.0  # seconds any one subprocess may take
TENURE = [sys.executable, "-m", "tenure"]

# A child that records its pid in argv[1], then waits; on SIGTERM it writes argv[1] + ".term"
# and exits 42.
TRAPPING_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    marker = Path(sys.argv[1])
    def on_term(signum, frame):
        Path(str(marker) + ".term").write_text("TERM")
        sys.exit(42)
    signal.signal(signal.SIGTERM, on_term)
    marker.write_text(str(os.getpid()))
    while True:
        signal.pause()
    """
)

# A child that writes its environment's TENURE_* variables as JSON to argv[1], then exits argv[2].
ENV_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k.startswith("TENURE_")}
    Path(sys.argv[1]).write_text(json.dumps(env))
    sys.exit(int(sys.argv[2]))
    """
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    root = tmp_path / "locks"
    root.mkdir()
    return f"file://{root}"


@pytest.fixture
def client(url: str) -> Iterator[tenure.Client]:
    with tenure.connect(url) as c:
        yield c


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tenure_cli(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TENURE, *args], check=False, capture_output=True, text=True, timeout=timeout, env=_env()
    )


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TENURE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} did not finish in {timeout} s; stderr: {err}")
    return proc.returncode, out, err


def stop(proc: subprocess.Popen[str], child_marker: Path | None = None) -> None:
    """Make sure ``proc`` (and, while it still runs, the CMD whose pid is in the marker) ended."""
    if proc.poll() is None:
        if child_marker is not None:
            kill_pid_in(child_marker)
        proc.kill()
    proc.communicate(timeout=TIMEOUT)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def standing_by(url: str, name: str) -> bool:
    """Whether election ``name`` has a leader and at least one standby."""
    with tenure.connect(url) as client:
        return len(client.election(name).candidates()) >= 2


def kill_pid_in(marker: Path) -> None:
    """Kill the child whose pid ``marker`` holds (a CMD orphaned by a SIGKILLed tenure)."""
    try:
        pid = int(marker.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def child(script: str, *args: str | Path) -> list[str]:
    return ["--", sys.executable, "-c", script, *(str(a) for a in args)]


# run


@pytest.mark.parametrize("code", [0, 3])
def test_run_returns_the_exit_code_of_cmd_and_passes_lock_and_token(
    url: str, tmp_path: Path, code: int
) -> None:
    out = tmp_path / "env.json"
    result = tenure_cli("run", "jobs/nightly", "--url", url, *child(ENV_CHILD, out, str(code)))
    assert result.returncode == code, result.stderr
    env = json.loads(out.read_text())
    assert env["TENURE_LOCK"] == "jobs/nightly"
    assert int(env["TENURE_TOKEN"]) >= 1
    assert set(env) == {"TENURE_LOCK", "TENURE_TOKEN"}


# The whole environment CMD sees (``tenure run`` runs it with a preexec_fn).
WHOLE_ENV_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    Path(sys.argv[1]).write_text(json.dumps(dict(os.environ)))
    """
)


@pytest.mark.parametrize("users", [None, "true"])
def test_run_turns_grpc_fork_support_off_for_itself_not_for_cmd(
    url: str, tmp_path: Path, users: str | None
) -> None:
    """grpcio 1.80+ can crash a child started with a preexec_fn while a channel is busy
    (grpc/grpc#43055): the program turns gRPC's fork support off for itself, unless the user
    set it; CMD's environment is the user's either way."""
    out = tmp_path / "env.json"
    env = _env()
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    if users is not None:
        env["GRPC_ENABLE_FORK_SUPPORT"] = users
    result = subprocess.run(
        [*TENURE, "run", "job", "--url", url, "--", sys.executable, "-c", WHOLE_ENV_CHILD,
         str(out)],
        check=False, capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()).get("GRPC_ENABLE_FORK_SUPPORT") == users
    program = (
        "import os, sys; sys.argv = ['tenure', '--version']; from tenure.cli import main; "
        "main(); print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    )
    itself = subprocess.run(
        [sys.executable, "-c", program], check=True, capture_output=True, text=True, env=env
    )
    assert itself.stdout.split()[-1] == (users or "false")


def test_run_tokens_increase_and_lock_is_released(url: str, tmp_path: Path) -> None:
    tokens = []
    for i in range(2):
        out = tmp_path / f"env{i}.json"
        result = tenure_cli("run", "n", "--url", url, "--no-wait", *child(ENV_CHILD, out, "0"))
        assert result.returncode == 0, result.stderr
        tokens.append(int(json.loads(out.read_text())["TENURE_TOKEN"]))
    assert tokens[1] > tokens[0]


def test_run_no_wait_exits_75_without_running_cmd(
    url: str, client: tenure.Client, tmp_path: Path
) -> None:
    out = tmp_path / "ran.json"
    with client.lock("busy") as lock:
        result = tenure_cli("run", "busy", "--url", url, "--no-wait", *child(ENV_CHILD, out, "0"))
        assert result.returncode == 75
        assert not out.exists()
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1
        assert f"pid {os.getpid()}" in message
        assert f"token {lock.token}" in message
        assert "\r" not in result.stderr  # no progress display when stderr is not a terminal


def test_run_timeout_exits_75(url: str, client: tenure.Client, tmp_path: Path) -> None:
    out = tmp_path / "ran.json"
    with client.lock("busy"):
        started = time.monotonic()
        result = tenure_cli(
            "run", "busy", "--url", url, "--timeout", "0.5", *child(ENV_CHILD, out, "0")
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 75, result.stderr
    assert not out.exists()
    assert "timed out after 0.5 s" in result.stderr
    assert elapsed >= 0.5


def test_run_waits_for_the_lock_then_runs(url: str, client: tenure.Client, tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    lock = client.lock("queue")
    assert lock.acquire()
    proc = spawn("run", "queue", "--url", url, *child(ENV_CHILD, out, "0"))
    try:
        wait_for(lambda: len(client.contenders("queue")) == 2, "tenure run to queue up")
        assert not out.exists()
        held_token = lock.token
        lock.release()
        code, _, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    assert int(json.loads(out.read_text())["TENURE_TOKEN"]) > held_token


def test_run_shows_progress_on_a_terminal(url: str, client: tenure.Client) -> None:
    master, slave = pty.openpty()
    try:
        with client.lock("busy"):
            proc = subprocess.Popen(
                [*TENURE, "run", "busy", "--url", url, "--timeout", "1.8", "--", "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=slave,
                env=_env(),
            )
            assert proc.wait(timeout=TIMEOUT) == 75
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not data:
                break
            chunks.append(data)
        text = b"".join(chunks).decode()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert f"\rwaiting for lock busy held by pid {os.getpid()}" in text
    assert "\r\x1b[K" in text  # the line is cleared before the final message
    assert "timed out" in text


def test_sigterm_to_run_reaches_the_child(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    proc = spawn("run", "sig", "--url", url, *child(TRAPPING_CHILD, marker))
    try:
        wait_for(marker.exists, "the child to start")
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    finally:
        stop(proc, marker)
    assert code == 42, err
    assert Path(f"{marker}.term").read_text() == "TERM"


def test_run_reports_a_child_killed_by_a_signal_like_a_shell(url: str) -> None:
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = tenure_cli("run", "k", "--url", url, "--", sys.executable, "-c", script)
    assert result.returncode == 128 + signal.SIGKILL


def test_sigterm_while_waiting_exits_143_without_running_cmd(
    url: str, client: tenure.Client, tmp_path: Path
) -> None:
    out = tmp_path / "ran.json"
    with client.lock("busy"):
        proc = spawn("run", "busy", "--url", url, *child(ENV_CHILD, out, "0"))
        try:
            wait_for(lambda: len(client.contenders("busy")) == 2, "tenure run to queue up")
            proc.send_signal(signal.SIGTERM)
            code, _, err = finish(proc)
        finally:
            stop(proc)
    assert code == 143, err
    assert not out.exists()
    assert "Traceback" not in err


def test_lost_lock_terminates_the_child(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    root = Path(url.removeprefix("file://"))
    name = "lost/one"
    lock_file = root / "tenure" / "lock" / f"{quote(name, safe='')}.lock"
    proc = spawn(
        "run", name, "--url", url, "--ttl", "1", "--grace", "5", *child(TRAPPING_CHILD, marker)
    )
    try:
        wait_for(marker.exists, "the child to start")
        assert lock_file.exists()
        lock_file.unlink()  # the session's check at ttl/3 sees that the lock file is not ours
        code, _, err = finish(proc)
    finally:
        stop(proc, marker)
    assert code == 70, err
    assert Path(f"{marker}.term").read_text() == "TERM"  # SIGTERM reached CMD
    assert "lost" in err


# errors


def test_bad_url_scheme_exits_78(tmp_path: Path) -> None:
    result = tenure_cli("run", "x", "--url", "bogus://host", "--", "true")
    assert result.returncode == 78
    assert result.stderr.startswith("tenure: error: unknown URL scheme 'bogus://'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_password_is_never_printed() -> None:
    result = tenure_cli("status", "--url", "bogus://user:s3cret@host:1")
    assert result.returncode == 78
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["run", "x"],
        ["run", "x", "--"],
        ["run", "x", "true"],
        ["elect", "x"],
        ["run", "x", "--no-wait", "--timeout", "1", "--", "true"],
        ["run", "x", "--timeout", "soon", "--", "true"],
        ["nonsense"],
        [],
    ],
)
def test_bad_arguments_exit_64(url: str, args: list[str]) -> None:
    result = tenure_cli(*args[:1], *(["--url", url] if args[:1] != ["nonsense"] else []), *args[1:])
    assert result.returncode == 64, result.stderr
    assert "tenure: error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_cmd_not_found_127_not_executable_126(url: str, tmp_path: Path) -> None:
    missing = tenure_cli("run", "x", "--url", url, "--", str(tmp_path / "no-such-cmd"))
    assert missing.returncode == 127
    assert "command not found" in missing.stderr
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    denied = tenure_cli("run", "x", "--url", url, "--", str(plain))
    assert denied.returncode == 126
    assert "permission denied" in denied.stderr


def test_bad_lock_name_exits_78(url: str) -> None:
    result = tenure_cli("run", "a/../b", "--url", url, "--", "true")
    assert result.returncode == 78
    assert result.stderr.startswith("tenure: error: lock name")


# status


def test_status_shows_holder_pid_and_token(url: str, client: tenure.Client) -> None:
    free = tenure_cli("status", "st", "--url", url)
    assert free.returncode == 0
    assert "free" in free.stdout
    with client.lock("st") as lock:
        token = lock.token
        table = tenure_cli("status", "st", "--url", url)
        assert table.returncode == 0, table.stderr
        holder_row = next(line for line in table.stdout.splitlines() if line.startswith("holder"))
        cells = holder_row.split()
        assert str(os.getpid()) in cells
        assert str(token) in cells
        as_json = tenure_cli("status", "st", "--url", url, "--json")
        assert as_json.returncode == 0, as_json.stderr
        record = json.loads(as_json.stdout)
    assert record["name"] == "st"
    assert record["holder"]["pid"] == os.getpid()
    assert record["holder"]["token"] == token
    assert record["waiters"] == []
    assert record["holder"]["acquired_at"].endswith("+00:00")
    free_json = json.loads(tenure_cli("status", "st", "--url", url, "--json").stdout)
    assert free_json["holder"] is None


def test_run_read_and_write_take_the_rwlock_sides(
    url: str, client: tenure.Client, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    rw = client.rwlock("cat")
    with rw.read:
        shared = tenure_cli("run", "cat", "--read", "--no-wait", "--url", url, "--",
                            sys.executable, "-c", ENV_CHILD, str(out), "0")  # fmt: skip
        assert shared.returncode == 0, shared.stderr
        assert int(json.loads(out.read_text())["TENURE_TOKEN"]) > rw.read.token
        busy = tenure_cli("run", "cat", "--write", "--no-wait", "--url", url, "--", "true")
        assert busy.returncode == 75
        assert "rwlock cat (write)" in busy.stderr
        table = tenure_cli("status", "cat", "--url", url)
        assert table.returncode == 0, table.stderr
        assert "rwlock cat: held" in table.stdout
        row = next(line for line in table.stdout.splitlines() if line.startswith("holder"))
        assert row.split()[1] == "shared"
        plain = tenure_cli("run", "cat", "--no-wait", "--url", url, "--", "true")
        assert plain.returncode == 0  # a plain lock of the same name is another key space
    assert (
        tenure_cli("run", "cat", "--write", "--no-wait", "--url", url, "--", "true").returncode == 0
    )


def test_run_limit_lets_n_in_and_refuses_another_limit(url: str, client: tenure.Client) -> None:
    first, second = client.semaphore("gpu", limit=2), client.semaphore("gpu", limit=2)
    assert first.acquire()
    ok = tenure_cli("run", "gpu", "--limit", "2", "--no-wait", "--url", url, "--", "true")
    assert ok.returncode == 0, ok.stderr
    assert second.acquire()
    full = tenure_cli("run", "gpu", "--limit", "2", "--no-wait", "--url", url, "--", "true")
    assert full.returncode == 75
    assert "semaphore gpu (limit 2)" in full.stderr
    other = tenure_cli("run", "gpu", "--limit", "3", "--no-wait", "--url", url, "--", "true")
    assert other.returncode == 78
    assert "2" in other.stderr
    assert "3" in other.stderr
    as_json = json.loads(tenure_cli("status", "gpu", "--kind", "semaphore", "--url", url,
                                    "--json").stdout)  # fmt: skip
    assert as_json["kind"] == "semaphore"
    assert sorted(h["token"] for h in as_json["holders"]) == sorted([first.token, second.token])
    assert {h["mode"] for h in as_json["holders"]} == {"permit"}
    first.release()
    second.release()
    bad = tenure_cli("run", "gpu", "--limit", "0", "--url", url, "--", "true")
    assert bad.returncode == 64
    both = tenure_cli("run", "gpu", "--limit", "2", "--read", "--url", url, "--", "true")
    assert both.returncode == 64


def test_status_without_name_shows_the_backend(url: str) -> None:
    result = tenure_cli("status", "--url", url)
    assert result.returncode == 0
    assert url in result.stdout
    record = json.loads(tenure_cli("status", "--url", url, "--json").stdout)
    assert record["url"] == url
    assert record["capabilities"]["leases"] is False


def test_main_in_process(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == url
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tenure {tenure.__version__}"


def test_python_m_tenure_help() -> None:
    result = tenure_cli("--help")
    assert result.returncode == 0
    for command in ("run", "elect", "status", "demo"):
        assert command in result.stdout
    assert "75" in result.stdout


# demo


def test_demo_is_exact_with_the_lock(url: str) -> None:
    result = tenure_cli(
        "demo", "--url", url, "--processes", "3", "--increments", "100", timeout=120
    )
    assert result.returncode == 0, result.stderr
    with_line = next(line for line in result.stdout.splitlines() if line.startswith("with tenure"))
    assert "300 / 300" in with_line
    assert "exact" in with_line
    assert any(line.startswith("without a lock") for line in result.stdout.splitlines())


def test_demo_json(url: str) -> None:
    result = tenure_cli(
        "demo", "--url", url, "--processes", "2", "--increments", "50", "--json", timeout=120
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["expected"] == 100
    assert record["with_lock"]["total"] == 100
    assert record["with_lock"]["tokens_strictly_increasing"] is True
    assert record["without_lock"]["total"] <= 100


# bench


def check_bench(record: dict[str, object], procs: list[int]) -> None:
    uncontended = record["uncontended"]
    assert isinstance(uncontended, dict)
    assert uncontended["samples"] == 100
    assert uncontended["p50_us"] > 0
    # A ratio, reported (no timing is asserted: speed lives in benchmarks/).
    assert record["floor"] is None or uncontended["p50_over_floor"] > 0
    runs = record["contended"]
    assert isinstance(runs, list)
    assert [run["processes"] for run in runs] == procs
    for run in runs:
        assert run["reported"] == run["processes"], run
        assert run["acquisitions"] > 0, run
        assert run["overlaps"] == 0, run
        assert run["errors"] == [], run
        assert 0 < run["fairness"] <= 1


def test_bench_file_json_and_table(url: str) -> None:
    args = ("bench", "--url", url, "--procs", "1,3", "--seconds", "0.5", "--iterations", "100")
    result = tenure_cli(*args, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["floor"]["what"].startswith("open + fcntl")
    check_bench(record, [1, 3])
    assert "contended: 3 processes" in result.stderr  # the progress display
    table = tenure_cli(*args, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "uncontended acquire + release" in table.stdout
    assert "x floor" in table.stdout
    assert "contended, 3 processes" in table.stdout


def bench_server(url: str, floor: str) -> None:
    """A short ``tenure bench --json`` against a server: its floor, and the checks above."""
    result = tenure_cli(
        "bench", "--url", url, "--procs", "2", "--seconds", "0.5", "--iterations", "100",
        "--json", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["floor"]["what"] == floor
    assert record["floor"]["samples"] == 100
    check_bench(record, [2])


@pytest.mark.server("redis")
def test_bench_redis(redis_server: RedisServer) -> None:
    bench_server(redis_server.url, "2 x PING (redis-py)")


@pytest.mark.server("postgres")
def test_bench_postgres(postgres_server: PostgresServer) -> None:
    bench_server(postgres_server.url, "2 x SELECT 1 (psycopg)")


@pytest.mark.server("etcd")
def test_bench_etcd(etcd_server: EtcdCluster) -> None:
    bench_server(etcd_server.url, "Txn + DeleteRange (grpc, tenure's stubs)")


def test_bench_bad_arguments(url: str) -> None:
    assert tenure_cli("bench", "--url", url, "--procs", "0").returncode == 64
    assert tenure_cli("bench", "--url", "nope://x").returncode == 78


# elect


def test_elect_standby_takes_over_when_the_leader_dies(url: str, tmp_path: Path) -> None:
    marker_a, marker_b = tmp_path / "a.pid", tmp_path / "b.json"
    first = spawn("elect", "svc", "--url", url, "--value", "a", *child(TRAPPING_CHILD, marker_a))
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(marker_a.exists, "the first candidate's CMD to start")
        second = spawn(
            "elect", "svc", "--url", url, "--value", "b", *child(ENV_CHILD, marker_b, "7")
        )
        wait_for(lambda: standing_by(url, "svc"), "the second candidate to stand by")
        assert not marker_b.exists()
        leader = tenure_cli("status", "svc", "--election", "--url", url, "--json")
        assert json.loads(leader.stdout)["holder"]["value"] == "a"
        first.kill()  # SIGKILL: the kernel frees the file lock at once
        first.wait(timeout=TIMEOUT)
        kill_pid_in(marker_a)  # its CMD, orphaned, still holds the output pipes
        code, _, err = finish(second)
    finally:
        stop(first, marker_a)
        if second is not None:
            stop(second)
    assert code == 7, err  # the second leader's CMD ran and its exit code came back
    env = json.loads(marker_b.read_text())
    assert env["TENURE_ELECTION"] == "svc"
    assert int(env["TENURE_LEADER_TERM"]) >= 2


def test_elect_standby_exits_130_on_sigint(url: str, tmp_path: Path) -> None:
    marker_a, marker_b = tmp_path / "a.pid", tmp_path / "b.json"
    first = spawn("elect", "svc", "--url", url, *child(TRAPPING_CHILD, marker_a))
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(marker_a.exists, "the first candidate's CMD to start")
        second = spawn("elect", "svc", "--url", url, *child(ENV_CHILD, marker_b, "0"))
        wait_for(lambda: standing_by(url, "svc"), "the second candidate to stand by")
        second.send_signal(signal.SIGINT)
        code, _, err = finish(second)
        assert code == 130, err
        assert "Traceback" not in err
        first.send_signal(signal.SIGTERM)  # forwarded: CMD exits 42, the leader resigns
        first_code, _, first_err = finish(first)
        assert first_code == 42, first_err
    finally:
        stop(first, marker_a)
        if second is not None:
            stop(second)
    assert not marker_b.exists()


def test_elect_once_exits_70_when_leadership_is_lost(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "a.pid"
    lock_file = Path(url.removeprefix("file://")) / "tenure" / "election" / "solo.lock"
    proc = spawn(
        "elect", "solo", "--url", url, "--ttl", "1", "--once", *child(TRAPPING_CHILD, marker)
    )
    try:
        wait_for(marker.exists, "the leader's CMD to start")
        lock_file.unlink()
        code, _, err = finish(proc)
    finally:
        stop(proc, marker)
    assert code == 70, err
    assert Path(f"{marker}.term").exists()


def test_cmd_dies_with_a_sigkilled_tenure(url: str, tmp_path: Path) -> None:
    """A SIGKILLed `tenure run` frees the lock at once (file backend): CMD must not outlive it."""
    marker = tmp_path / "child.pid"
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    proc = spawn("run", "orphan", "--url", url, *child(script, marker))
    try:
        wait_for(lambda: marker.exists() and marker.read_text() != "", "the child to start")
        pid = int(marker.read_text())
        proc.kill()
        proc.communicate(timeout=TIMEOUT)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # a zombie re-parented to init counts as gone once reaped; check its state
            with contextlib.suppress(OSError):
                return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            return True

        wait_for(gone, "CMD to die with tenure")
    finally:
        stop(proc, marker)


def test_elect_with_three_processes_hands_the_child_over(url: str, tmp_path: Path) -> None:
    log = tmp_path / "leaders"
    script = (
        "import os, sys, time\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(os.environ['TENURE_LEADER_TERM'] + ' ' + str(os.getpid()) + '\\n')\n"
        "time.sleep(60)"
    )
    procs = {
        name: spawn("elect", "trio", "--url", url, "--value", name, *child(script, log))
        for name in "abc"
    }

    def records() -> list[tuple[int, int]]:
        text = log.read_text() if log.exists() else ""
        return [(int(t), int(p)) for t, p in (line.split() for line in text.splitlines())]

    def dead(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        except OSError:
            return True

    try:
        for round_ in range(3):
            wait_for(lambda n=round_ + 1: len(records()) == n, f"leader number {round_ + 1}")

            def status() -> dict[str, Any]:
                return dict(json.loads(tenure_cli("status", "trio", "--election", "--url", url,
                                                  "--json").stdout))  # fmt: skip

            # The standbys start concurrently with the leader: wait until they have queued.
            wait_for(lambda n=2 - round_: len(status()["waiters"]) == n, "the standbys to queue")
            current = status()
            leader = current["holder"]["value"]
            assert len(current["waiters"]) == 2 - round_
            old_cmd = records()[-1][1]
            procs[leader].kill()  # SIGKILL tenure: its CMD dies with it, a standby takes over
            procs[leader].communicate(timeout=TIMEOUT)
            wait_for(lambda pid=old_cmd: dead(pid), "the old leader's CMD to die")
        terms = [term for term, _ in records()]
        assert terms == sorted(terms)
        assert len(set(terms)) == 3
    finally:
        for proc in procs.values():
            stop(proc)
