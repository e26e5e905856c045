"""PostgreSQL-specific behaviour: silent holders lose their locks, killed sessions, a stopped or
killed postmaster, cancelled and timed-out waiters, schema set-up, bad input; the rwlock's order
in PostgreSQL's own queue and the semaphore's turnstile, slots and head waiter."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import signal
import threading
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
        # An exclusive holder's record is in its key's counters row (kept after the release:
        # believed only with pg_locks).
        "SELECT h.backend_pid FROM tenure.counters h JOIN pg_locks l ON l.pid = h.backend_pid"
        " AND l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'"
        " AND l.objsubid = 1 AND l.objid = (h.key & 4294967295)::oid"
        " WHERE h.namespace = %s AND h.name = %s",
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
            "SELECT count(DISTINCT backend_pid) FROM tenure.counters WHERE namespace = %s",
            (namespace,),
        ).fetchone()
        assert row == (1,), "uncontended locks should share the session's primary connection"
        time.sleep(1.5)  # keep-alives at TTL/3 keep the one connection (and all 50) alive
        for lock in locks:
            lock.ensure_held()
            lock.release()


def test_a_process_that_only_takes_locks_keeps_one_connection(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    """connect()'s connection becomes the first session's primary, with the session's
    settings (set_config): one connection per process, not two; holder() opens its own."""
    app = "tenure-one-" + uuid.uuid4().hex[:8]

    def connections() -> list[tuple[int, str]]:
        return [(int(pid), str(state)) for pid, state in admin.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()]  # fmt: skip

    with tenure.connect(f"{url}&application_name={app}", ttl=1.5) as client:
        assert len(connections()) == 1
        with client.lock("one") as lock:
            assert [pid for pid, _ in connections()] == [backend_pid_of(admin, url, "one")]
            # It carries the session's settings, as one opened for the session would.
            assert lock._grant is not None
            conn = lock._grant.data.conn
            shown = [conn.execute(f"SHOW {name}").fetchone()[0] for name in (
                "idle_session_timeout", "client_connection_check_interval", "tcp_user_timeout"
            )]  # fmt: skip
            assert shown == ["1500ms", "500ms", "1500"]
        assert len(connections()) == 1
        assert client.holder("one") is None  # opens a connection for inspection
        assert len(connections()) == 2


def test_a_schema_made_by_an_earlier_tenure_is_refused_clearly(
    postgres_server: PostgresServer,
) -> None:
    schema = "old" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        # The holders table as tenure made it before the shared modes (no lock, mode, lim).
        conn.execute(
            f'CREATE UNLOGGED TABLE "{schema}".holders (key bigint PRIMARY KEY,'
            " backend_pid int NOT NULL, namespace text NOT NULL, name text NOT NULL,"
            " owner text NOT NULL, host text NOT NULL, pid int NOT NULL, token bigint NOT NULL,"
            " acquired_at timestamptz NOT NULL, ttl float8 NOT NULL, value jsonb)"
        )
    with (
        pytest.raises(ConfigurationError, match=f'DROP SCHEMA "{schema}" CASCADE'),
        tenure.connect(f"{postgres_server.url}?schema={schema}") as client,
    ):
        client.lock("x").acquire()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    with (
        tenure.connect(f"{postgres_server.url}?schema={schema}") as client,
        client.lock("x") as lock,
    ):
        assert lock.token > 0


def test_an_earlier_counters_table_is_migrated_and_its_holds_kept(
    postgres_server: PostgresServer,
) -> None:
    """A schema whose counters table is the earlier (key, token) one gains the holder and hold
    columns at connect; a min_hold entry an earlier client kept there (only in holds) still
    blocks, and tokens keep increasing."""
    schema = "mig" + uuid.uuid4().hex[:8]
    url = f"{postgres_server.url}?schema={schema}"
    with tenure.connect(url) as client, client.lock("x") as lock:
        first = lock.token
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        columns = ", ".join(f"DROP COLUMN {c}" for c in (
            "backend_pid", "owner", "host", "pid", "acquired_at", "ttl", "value", "namespace",
            "name", "kept_x", "kept_s",
        ))  # fmt: skip
        conn.execute(f'ALTER TABLE "{schema}".counters {columns}')
        row = conn.execute(f'SELECT key FROM "{schema}".counters').fetchone()
        assert row is not None
        conn.execute(
            f'INSERT INTO "{schema}".holds (key, owner, lock, mode, lim, namespace, name, host,'
            " pid, token, acquired_at, value, until) VALUES (%s, 'earlier', %s, 'exclusive', 0,"
            " 'default', 'lock/x', 'h', 1, %s, now(), NULL, now() + interval '2 seconds')",
            (row[0], row[0], first),
        )
    with tenure.connect(url) as client:
        started = time.monotonic()
        lock = client.lock("x")
        assert not lock.acquire(blocking=False), "the earlier client's hold was ignored"
        assert lock.acquire(timeout=10)
        assert time.monotonic() - started >= 1.0
        assert lock.token > first
        lock.release()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_holds_are_restored_into_an_emptied_counters_table(
    postgres_server: PostgresServer,
) -> None:
    """After a crash (or a promotion) the UNLOGGED counters table is empty but the logged holds
    table is not: a new connection puts the live holds' ends back, so a hold still blocks.
    (Emptied by hand here: the crash itself is tests/faults' kill-server.)"""
    schema = "rst" + uuid.uuid4().hex[:8]
    url = f"{postgres_server.url}?schema={schema}"
    with tenure.connect(url) as client:
        job = client.lock("job", min_hold=2.0)
        assert job.acquire()
        job.release()  # kept until grant + 2 s
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'TRUNCATE "{schema}".counters')
    with tenure.connect(url) as client:
        assert not client.lock("job").acquire(blocking=False), "a hold was lost with counters"
        assert client.lock("job").acquire(timeout=10)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


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


# The shared modes: what PostgreSQL itself does with them.


def lock_key(url: str, key: str) -> int:
    """The advisory lock of ``key`` ("<kind>/<name>"): BLAKE2b of namespace/key, 64 bits."""
    namespace = url.rpartition("namespace=")[2]
    digest = hashlib.blake2b(f"{namespace}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def advisory(admin: psycopg.Connection[Any], key: int) -> list[tuple[str, bool, int]]:
    """(mode, granted, backend pid) of every holder of advisory lock ``key``, then its waiters in
    PostgreSQL's queue order."""
    rows = admin.execute(
        "SELECT l.mode, l.granted, l.pid FROM pg_locks l WHERE l.locktype = 'advisory'"
        " AND l.objsubid = 1 AND l.classid = ((%(k)s::bigint >> 32) & 4294967295)::oid"
        " AND l.objid = (%(k)s::bigint & 4294967295)::oid ORDER BY l.granted DESC, l.waitstart",
        {"k": key},
    ).fetchall()
    return [(str(mode), bool(granted), int(pid)) for mode, granted, pid in rows]


def modes(admin: psycopg.Connection[Any], key: int) -> list[tuple[str, bool]]:
    return [(mode, granted) for mode, granted, _ in advisory(admin, key)]


def test_a_reader_arriving_while_a_writer_waits_queues_behind_it_in_the_server(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    """PostgreSQL's lock queue is the grant rule: a shared request that conflicts with a queued
    exclusive one waits behind it, and its try (the fast path) is refused; also in a session
    whose connection already holds the lock shared (PostgreSQL would let that connection take it
    again past the queue, so the driver must not ask there)."""
    k = lock_key(url, "rwlock/order")
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        first = a.rwlock("order")
        assert first.read.acquire()
        order: list[str] = []
        wrote, done_writing = threading.Event(), threading.Event()

        def write() -> None:
            writer = b.rwlock("order")
            assert writer.write.acquire(timeout=30)
            order.append("writer")
            wrote.set()
            assert done_writing.wait(30)
            writer.write.release()

        runner = Runner()
        runner.start(write)
        wait_for(lambda: len(advisory(admin, k)) == 2)
        assert modes(admin, k) == [("ShareLock", True), ("ExclusiveLock", False)]
        assert not c.rwlock("order").read.acquire(blocking=False)
        tries = Runner()  # another thread: the main one holds the read side of a already
        tries.start(lambda: a.rwlock("order").read.acquire(blocking=False))
        assert tries.join() == [False]

        for queued, client in enumerate((c, a), start=3):

            def read(client: tenure.Client = client) -> None:
                rw = client.rwlock("order")
                assert rw.read.acquire(timeout=30)
                order.append("reader")
                rw.read.release()

            runner.start(read)
            wait_for(lambda queued=queued: len(advisory(admin, k)) == queued)
        assert modes(admin, k) == [
            ("ShareLock", True),
            ("ExclusiveLock", False),
            ("ShareLock", False),
            ("ShareLock", False),
        ]
        assert [(h.mode, h.waiting) for h in a.rwlock("order").contenders()] == [
            ("shared", False),
            ("exclusive", True),
            ("shared", True),
            ("shared", True),
        ]
        first.read.release()
        assert wrote.wait(30)
        assert modes(admin, k) == [
            ("ExclusiveLock", True),
            ("ShareLock", False),
            ("ShareLock", False),
        ]
        done_writing.set()
        runner.join()
        assert order == ["writer", "reader", "reader"]
        assert advisory(admin, k) == []


def test_a_writer_that_times_out_lets_the_readers_queued_behind_it_in(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    k = lock_key(url, "rwlock/left")
    with tenure.connect(url) as a, tenure.connect(url) as b, tenure.connect(url) as c:
        first = a.rwlock("left")
        assert first.read.acquire()
        runner = Runner()
        runner.start(lambda: b.rwlock("left").write.acquire(timeout=3.0))
        wait_for(lambda: len(advisory(admin, k)) == 2)
        reader = c.rwlock("left")
        granted = threading.Event()

        def read() -> bool:
            ok = reader.read.acquire(timeout=30)
            granted.set()
            return ok

        runner.start(read)
        wait_for(lambda: len(advisory(admin, k)) == 3)
        assert modes(admin, k) == [
            ("ShareLock", True),
            ("ExclusiveLock", False),
            ("ShareLock", False),
        ]
        assert not granted.is_set()
        # The writer's lock_timeout ends its wait; PostgreSQL wakes the reader behind it at once,
        # while the first reader still holds.
        assert granted.wait(30)
        assert runner.join() == [False, True]
        assert first.read.held
        assert modes(admin, k) == [("ShareLock", True), ("ShareLock", True)]
        reader.read.release()
        first.read.release()


def slot_holders(admin: psycopg.Connection[Any], k: int) -> list[tuple[int, int]]:
    """(slot lock, backend pid) of the live permit holders of the semaphore whose turnstile is k."""
    rows = admin.execute(
        "SELECT h.lock, h.backend_pid FROM tenure.holders h JOIN pg_locks l"
        " ON l.pid = h.backend_pid AND l.granted AND l.locktype = 'advisory' AND l.objsubid = 1"
        " AND l.classid = ((h.lock >> 32) & 4294967295)::oid"
        " AND l.objid = (h.lock & 4294967295)::oid WHERE h.key = %s",
        (k,),
    ).fetchall()
    return [(int(lock), int(pid)) for lock, pid in rows]


def test_semaphore_waiters_queue_on_the_turnstile_and_a_release_notifies_the_head(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    k = lock_key(url, "semaphore/gpu")
    with tenure.connect(url, ttl=30) as a:
        held = [a.semaphore("gpu", limit=2) for _ in range(2)]
        for sem in held:
            assert sem.acquire(blocking=False)
        # Two permits of one session: two slots, on two connections (one grant per key each).
        slots = slot_holders(admin, k)
        assert len({lock for lock, _ in slots}) == 2
        assert len({pid for _, pid in slots}) == 2
        assert k not in {lock for lock, _ in slots}
        assert advisory(admin, k) == []  # nobody keeps the turnstile without waiting
        assert not a.semaphore("gpu", limit=2).acquire(blocking=False)

        waiters = [tenure.connect(url, ttl=30) for _ in range(3)]
        try:
            order: list[int] = []
            granted = [threading.Event() for _ in waiters]
            leave = threading.Event()
            runner = Runner()
            for i, client in enumerate(waiters):

                def wait(client: tenure.Client = client, i: int = i) -> None:
                    sem = client.semaphore("gpu", limit=2)
                    assert sem.acquire(timeout=60)
                    order.append(i)
                    granted[i].set()
                    assert leave.wait(60)
                    sem.release()

                runner.start(wait)
                wait_for(lambda i=i: len(a.semaphore("gpu", limit=2).contenders()) == i + 3)
            # The head holds the turnstile and listens (idle between statements); the others
            # are blocked in PostgreSQL's queue for it, sending nothing.
            turnstile = advisory(admin, k)
            assert [(m, g) for m, g, _ in turnstile] == [("ExclusiveLock", True)] + [
                ("ExclusiveLock", False)
            ] * 2
            states = dict(
                admin.execute(
                    "SELECT pid, coalesce(wait_event_type, state) FROM pg_stat_activity"
                    " WHERE pid = ANY(%s)",
                    ([pid for _, _, pid in turnstile],),
                ).fetchall()
            )
            assert [states[pid] for _, _, pid in turnstile] == ["Client", "Lock", "Lock"]
            contenders = a.semaphore("gpu", limit=2).contenders()
            assert [(h.mode, h.waiting) for h in contenders] == [("permit", False)] * 2 + [
                ("permit", True)
            ] * 3
            # TTL 30 s: the head's own re-check would come after 10 s, so a prompt grant can
            # only be the release's NOTIFY.
            started = time.monotonic()
            held[0].release()
            assert granted[0].wait(5)
            print(f"head granted {time.monotonic() - started:.3f} s after a release")
            assert not granted[1].is_set()
            wait_for(lambda: advisory(admin, k)[:1] == [("ExclusiveLock", True, turnstile[1][2])])
            held[1].release()
            assert granted[1].wait(5)
            assert not granted[2].is_set()
            leave.set()
            runner.join()
            assert order == [0, 1, 2]
            assert advisory(admin, k) == []
            assert slot_holders(admin, k) == []
        finally:
            for client in waiters:
                client.close()


def test_a_killed_permit_holder_is_found_by_the_heads_recheck(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    """A holder whose session ends without a release sends no NOTIFY: the head looks again
    every TTL/3 of its session (here 0.5 s), on the connection that holds the turnstile."""
    k = lock_key(url, "semaphore/dead")
    with tenure.connect(url, ttl=30) as a, tenure.connect(url, ttl=1.5) as b:
        holder = a.semaphore("dead", limit=1)
        assert holder.acquire()
        waiter = b.semaphore("dead", limit=1)
        runner = Runner()
        runner.start(lambda: waiter.acquire(timeout=30))
        wait_for(lambda: len(holder.contenders()) == 2)
        [(_, _, head)] = advisory(admin, k)  # the head, holding the turnstile
        [(slot, pid)] = slot_holders(admin, k)
        started = time.monotonic()
        assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)
        assert runner.join(10) == [True]
        waited = time.monotonic() - started
        print(f"head granted {waited:.3f} s after the holder's session ended (TTL/3 = 0.5 s)")
        # Granted to the head's own connection (not after the server ended it for silence, to a
        # retry on a new one), well within the TTL.
        assert slot_holders(admin, k) == [(slot, head)]
        assert waited < 1.5
        assert waiter.token > holder.token
        with pytest.raises(LockLostError):
            holder.ensure_held()
        waiter.release()


def test_semaphore_limit_is_compared_with_live_records_only(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    k = lock_key(url, "semaphore/quota")
    with (
        tenure.connect(url) as a,
        tenure.connect(url) as b,
        tenure.connect(url) as c,
        tenure.connect(url) as d,
    ):
        held = a.semaphore("quota", limit=1)
        assert held.acquire()
        runner = Runner()
        waiting = b.semaphore("quota", limit=1)
        runner.start(lambda: waiting.acquire(timeout=30))
        wait_for(lambda: len(held.contenders()) == 2)
        before = advisory(admin, k)
        with pytest.raises(ConfigurationError, match="has limit 1"):
            c.semaphore("quota", limit=3).acquire(timeout=5)
        assert advisory(admin, k) == before  # the refused contender took nothing, queued nowhere
        assert len(held.contenders()) == 2
        held.release()
        assert runner.join() == [True]
        waiting.release()
        # A holder that ends without releasing leaves its record (limit 1) behind: not a live one.
        dead = c.semaphore("quota", limit=1)
        assert dead.acquire()
        [(_, pid)] = slot_holders(admin, k)
        assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)
        row = admin.execute("SELECT count(*) FROM tenure.holders WHERE key = %s", (k,)).fetchone()
        assert row == (1,)
        other = d.semaphore("quota", limit=4)
        assert other.acquire(blocking=False)
        other.release()


def test_tokens_follow_the_server_clock_and_never_repeat_when_it_steps_back(
    url: str, admin: psycopg.Connection[Any]
) -> None:
    """token = greatest(the name's last token + 1, server clock in µs): near the clock, and
    above the last token even when that is ahead of the clock (as after a clock step back)."""
    k = lock_key(url, "rwlock/stepped")
    with tenure.connect(url) as a, tenure.connect(url) as b:
        writer = a.rwlock("stepped").write
        assert writer.acquire()
        row = admin.execute(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
        ).fetchone()
        assert row is not None
        first = writer.token
        assert 0 <= row[0] - first < 60_000_000, "the token is not the server clock in µs"
        writer.release()
        ahead = first + 10**12  # as if the clock had stepped back 11.6 days since
        admin.execute("UPDATE tenure.counters SET token = %s WHERE key = %s", (ahead, k))
        assert writer.acquire()
        assert writer.token == ahead + 1
        writer.release()
        # Readers granted together (two sessions, concurrently) each take the next one.
        readers = [a.rwlock("stepped").read, b.rwlock("stepped").read]
        runner = Runner()
        for reader in readers:
            runner.start(reader.acquire)
        assert runner.join(10) == [True, True]
        assert sorted(r.token for r in readers) == [ahead + 2, ahead + 3]
        for reader in readers:
            reader.release()
