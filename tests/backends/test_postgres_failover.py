"""Fencing tokens across the promotion of an asynchronous standby that missed the newest WAL.

Replication is asynchronous, so a standby promoted after its primary died may lack the last
grants. Their tokens must still be below every token the new primary hands out (the promise of
docs/semantics.md: tokens follow the server clock, whose offset between the two servers is
smaller than the failover time)."""

from __future__ import annotations

import time

import psycopg
import pytest

import tenure
from tests.servers.postgres import start_postgres, start_postgres_standby
from tests.servers.process import record_timing, wait_until

pytestmark = pytest.mark.server("postgres")

#: More grants after the cut-off than the 32 values a sequence WAL-logs ahead of its use, so
#: that a token from a plain sequence would repeat on the promoted standby.
MISSED = 40


def grants(url: str, name: str, count: int) -> list[int]:
    """Tokens of ``count`` successive grants of rwlock ``name``: writes, and every fourth a read
    (each grant of either side takes the name's next token)."""
    tokens = []
    with tenure.connect(url, ttl=5.0) as client:
        rw = client.rwlock(name, timeout=10)
        for i in range(count):
            held = rw.read if i % 4 == 3 else rw.write
            assert held.acquire()
            tokens.append(held.token)
            held.release()
    return tokens


def sql(url: str, statement: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        row = cursor.fetchone() if cursor.description else None
    return None if row is None else row[0]


def test_a_promoted_standby_grants_tokens_above_every_token_of_the_lost_primary() -> None:
    # A primary of its own (this test kills it), and its asynchronous standby.
    with start_postgres() as primary, start_postgres_standby(primary) as standby:
        url = f"{primary.url}?namespace=failover"
        replicated = grants(url, "job", 5)
        sql(primary.url, "CREATE TABLE after_cut (at timestamptz)")
        lsn = str(sql(primary.url, "SELECT pg_current_wal_insert_lsn()::text"))
        wait_until(lambda: standby.replayed(lsn), 10.0, "the standby replayed the first grants")
        standby.detach()  # cut off: it keeps its data, and misses what follows
        lost = grants(url, "job", MISSED)
        sql(primary.url, "INSERT INTO after_cut VALUES (now())")  # a write the standby misses
        primary.kill()  # the old primary is gone, with the WAL the standby never got
        t0 = time.monotonic()
        standby.promote()
        record_timing("postgres standby promotion", time.monotonic() - t0)
        assert sql(standby.url, "SELECT count(*) FROM after_cut") == 0, "nothing was lost"
        after = grants(f"{standby.url}?namespace=failover", "job", 2)
        before = replicated + lost
        assert before == sorted(set(before)), f"tokens not strictly increasing: {before}"
        assert after[0] > max(before), (
            f"the promoted standby granted token {after[0]}, not above {max(before)} that the "
            f"lost primary had granted (tokens granted there: {before})"
        )
        assert after[1] > after[0]
