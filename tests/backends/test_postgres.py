"""PostgreSQL-specific behaviour: silent holders lose their locks, killed sessions, a stopped or
killed postmaster, cancelled and timed-out waiters, schema set-up, bad input."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tenure
from tenure import aio
from tenure.errors import BackendUnavailableError, ConfigurationError, LockLostError
from tests.contract.runners import Runner
from tests.servers import PostgresServer, start_pgbouncer

pytestmark = pytest.mark.server("postgres")
SPAWN = multiprocessing.get_context("spawn")


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    Runner.wait_for(condition, timeout)


def hold_and_report(url: str, name: str, state: str, ttl: float) -> None:
    """Worker: acquire ``name``, note ``held <token>``, then note ``lost`` when the lock is lost."""
    with tenure.connect(url, ttl=ttl) as client:
        lock = client.lock(name)
        lock.acquire()

        def note(text: str) -> None:
            with open(state, "a") as f:
                f.write(text + "\n")

        note(f"held {lock.token}")
        if lock.lost.wait(120):
            note("lost")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:
    return f"{postgres_server.url}?namespace=p{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(postgres_server: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        yield conn


def backend_pid_of(admin: psycopg.Connection[Any], url: str, name: str) -> int:
    namespace = url.rpartition("namespace=")[2]
    row = admin.execute(
        "SELECT h.backend_pid FROM tenure.holders h JOIN pg_locks l ON l.pid = h.backend_pid"
        " AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.objid = (h.key & 4294967295)::oid WHERE h.namespace = %s AND h.name = %s",
        (namespace, f"lock/{name}"),
    ).fetchone()
    assert row is not None, f"nobody holds {name}"
    return int(row[0])


def test_paused_holder_loses_its_lock_after_the_ttl(url: str, tmp_path: Path) -> None:
    ttl = 1.0
    state = tmp_path / "state"
    holder = SPAWN.Process(target=hold_and_report, args=(url, "paused", str(state), ttl))
    holder.start()
    try:
        wait_for(lambda: lines(state), 60)
        old_token = int(lines(state)[0].split()[1])
        os.kill(holder.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        started = time.monotonic()
        try:
            with tenure.connect(url, ttl=ttl) as client:
                lock = client.lock("paused")
                assert lock.acquire(timeout=30), "the paused holder kept its lock"
                waited = time.monotonic() - started
                print(f"waiter acquired {waited:.3f} s after the holder was paused (ttl {ttl})")
                assert waited >= ttl * 0.9, "granted before the silent holder's TTL ran out"
                assert lock.token > old_token
                os.kill(holder.pid, signal.SIGCONT)  # type: ignore[arg-type]
                wait_for(lambda: "lost" in lines(state), 30)
                lock.ensure_held()  # the old holder waking up changes nothing for us
                lock.release()
        finally:
            os.kill(holder.pid, signal.SIGCONT)  # type: ignore[arg-type]
        holder.join(30)
        assert holder.exitcode == 0
    finally:
        holder.kill()
        holder.join(10)


def test_terminated_backend_loses_the_lock_and_the_waiter_gets_it(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    with tenure.connect(url, ttl=1.0) as a, tenure.connect(url, ttl=1.0) as b:
        lock = a.lock("terminated")
        assert lock.acquire()
        old_token = lock.token
        runner = Runner()
        other = b.lock("terminated")
        runner.start(lambda: other.acquire(timeout=30))
        wait_for(lambda: len(a.contenders("terminated")) == 2)
        row = admin.execute(
            "SELECT pg_terminate_backend(%s, 5000)", (backend_pid_of(admin, url, "terminated"),)
        ).fetchone()
        assert row == (True,)
        assert runner.join(30) == [True]
        assert other.token > old_token
        assert lock.lost.wait(10), "the holder did not learn that its session was ended"
        with pytest.raises(LockLostError):
            lock.release()
        other.release()
        # The session replaces its broken connection: the lock can be taken again.
        assert lock.acquire(timeout=10)
        lock.release()


def test_postmaster_stopped_and_continued_keeps_the_lock(fresh_postgres: PostgresServer) -> None:
    url = f"{fresh_postgres.url}?namespace=stop"
    with tenure.connect(url, ttl=1.0) as client:
        lock = client.lock("kept")
        assert lock.acquire()
        token = lock.token
        fresh_postgres.pause()  # the postmaster only: its backends (our sessions) keep running
        try:
            time.sleep(3.0)  # three TTLs of keep-alives on the existing connections
            assert not lock.lost.is_set()
            lock.ensure_held()
        finally:
            fresh_postgres.resume()
        assert lock.token == token
        lock.release()
        assert lock.acquire(timeout=10)
        assert lock.token > token
        lock.release()


def test_postmaster_killed_and_restarted(fresh_postgres: PostgresServer) -> None:
    url = f"{fresh_postgres.url}?namespace=crash"
    with tenure.connect(url, ttl=1.0) as client:
        lock = client.lock("crashed")
        assert lock.acquire()
        old_token = lock.token
        fresh_postgres.kill()
        assert lock.lost.wait(10), "the holder did not learn that the server died"
        fresh_postgres.restart(60)
        with tenure.connect(url, ttl=1.0) as other:
            again = other.lock("crashed")
            assert again.acquire(timeout=30)
            assert again.token > old_token, "fencing token went backwards after a crash"
            again.release()


async def test_cancelled_waiter_leaves_nothing(url: str, admin: psycopg.Connection[Any]) -> None:
    async with await aio.connect(url, ttl=1.0) as a, await aio.connect(url, ttl=1.0) as b:
        lock = a.lock("cancelled")
        assert await lock.acquire()
        waiter = b.lock("cancelled")
        task = asyncio.create_task(waiter.acquire())
        for _ in range(500):
            if len(await a.contenders("cancelled")) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(await a.contenders("cancelled")) == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        holder = await a.holder("cancelled")
        assert holder is not None
        assert [c.owner for c in await a.contenders("cancelled")] == [holder.owner]
        waiting = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        assert waiting == (0,)
        await lock.release()
        third = a.lock("cancelled")
        assert await third.acquire(blocking=False), "a cancelled waiter still holds or waits"
        await third.release()
        # The cancelled waiter's session still works.
        assert await waiter.acquire(timeout=10)
        await waiter.release()


def test_timed_out_waiter_leaves_a_usable_session(url: str) -> None:
    with tenure.connect(url, ttl=1.0) as a, tenure.connect(url, ttl=1.0) as b:
        lock = a.lock("timeout")
        assert lock.acquire()
        waiter = b.lock("timeout")
        started = time.monotonic()
        assert not waiter.acquire(timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert len(a.contenders("timeout")) == 1
        lock.release()
        assert waiter.acquire(blocking=False)
        waiter.release()


def test_many_locks_in_one_session_share_one_connection(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    namespace = url.rpartition("namespace=")[2]
    with tenure.connect(url, ttl=1.0) as client:
        locks = [client.lock(f"many-{i}") for i in range(50)]
        for lock in locks:
            assert lock.acquire(blocking=False)
        row = admin.execute(
            "SELECT count(DISTINCT backend_pid) FROM tenure.holders WHERE namespace = %s",
            (namespace,),
        ).fetchone()
        assert row == (1,), "uncontended locks should share the session's primary connection"
        time.sleep(1.5)  # keep-alives at TTL/3 keep the one connection (and all 50) alive
        for lock in locks:
            lock.ensure_held()
            lock.release()


def test_schema_option_and_bad_input(postgres_server: PostgresServer) -> None:
    schema = "s" + uuid.uuid4().hex[:8]
    with tenure.connect(f"{postgres_server.url}?namespace=x&schema={schema}") as client:
        lock = client.lock("in-schema")
        assert lock.acquire()
        assert client.holder("in-schema") is not None
        lock.release()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.holders",)).fetchone()
        assert row == (True,)
    with pytest.raises(ConfigurationError, match="schema"):
        tenure.connect(f"{postgres_server.url}?schema=bad-name")
    with pytest.raises(ConfigurationError, match="nosuchdb"):
        tenure.connect(
            f"postgresql://postgres@{postgres_server.host}:{postgres_server.port}/nosuchdb"
        )
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:1\b") as info:
        tenure.connect("postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret" not in str(info.value)


def test_ttl_below_the_minimum_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="minimum"):
        tenure.connect(url, ttl=0.1)


@pytest.mark.parametrize("ignore_options", [False, True], ids=["strict", "ignoring-options"])
def test_transaction_pooling_pgbouncer_is_refused(
    postgres_server: PostgresServer, ignore_options: bool
) -> None:
    # A transaction pool hands each statement to any server session: a session-level lock
    # taken through it would be held by a session we cannot renew or release. PgBouncer
    # either rejects the settings tenure sends at connection start, or (told to ignore them)
    # drops them; both are caught.
    bouncer = start_pgbouncer(postgres_server, ignore_options=ignore_options)
    try:
        with psycopg.connect(bouncer.url, autocommit=True) as conn:  # the proxy itself works
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(ConfigurationError, match=r"pgbouncer|pooler"):
            tenure.connect(f"{bouncer.url}?namespace=pooled")
    finally:
        bouncer.close()
