"""Logs on the ``tenure`` logger, on real servers: losses at WARNING (name, token, owner id,
reason), elections at INFO, retries at DEBUG; never a password; no handler installed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import tenure
from tests.contract.backends import Backend, make_backend

TIMEOUT = 20.0


@pytest.fixture(params=["redis", "etcd", "zookeeper"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tenure" and r.levelno == level]


def test_the_library_installs_no_handler() -> None:
    import importlib

    for flavour in ("_async", "_sync"):  # every backend module of both flavours imported
        for module in ("etcd", "file", "postgres", "redis", "redlock", "zookeeper"):
            importlib.import_module(f"tenure.{flavour}.backends.{module}")
    assert logging.getLogger("tenure").handlers == []
    assert logging.getLogger("tenure").level == logging.NOTSET


def test_a_lost_lock_is_a_warning_with_name_token_owner_and_reason(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenure")
    with tenure.connect(backend.url, ttl=1.0) as client:
        lock = client.lock("reports/nightly")
        assert lock.acquire(timeout=10)
        token = lock.token
        owner = client.contenders("reports/nightly")[0].owner
        backend.steal("reports/nightly")
        assert lock.lost.wait(TIMEOUT)
        with pytest.raises(tenure.LockLostError):
            lock.release()
    warnings = [m for m in messages(caplog, logging.WARNING) if "lost" in m]
    assert warnings, caplog.text
    assert "'reports/nightly'" in warnings[0]
    assert f"token {token}" in warnings[0]
    assert f"owner {owner}" in warnings[0]
    assert "deleted or taken" in warnings[0]


def test_elections_are_info(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tenure")
    with tenure.connect(backend.url) as client:
        election = client.election("primary", value="10.0.0.1")
        assert election.campaign(timeout=10)
        term = election.term
        election.resign()
    info = messages(caplog, logging.INFO)
    assert any("'primary'" in m and "leader now" in m and f"term {term}" in m for m in info), info
    assert any("'primary'" in m and "resigned" in m for m in info), info


def test_retries_are_debug(redis_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tenure")
    with tenure.connect(redis_proxy.url_for("redis")) as client:
        lock = client.lock("retried")
        assert lock.acquire(timeout=10)  # the session's lease and connection are set up
        lock.release()
        redis_proxy.drop_next_reply(sever=True)  # the next acquire's reply never comes
        assert lock.acquire(timeout=10)
        lock.release()
    debug = messages(caplog, logging.DEBUG)
    assert any("retry 1" in m for m in debug), caplog.text
    assert not any("retry" in m for m in messages(caplog, logging.WARNING))


def test_no_password_in_any_log(
    fresh_postgres: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: the client libraries' too
    password = "pw-Zq8-never-logged"
    url = fresh_postgres.url.replace("://", f"://{fresh_postgres.user}:{password}@", 1)
    client = tenure.connect(url, ttl=1.0)
    try:
        lock = client.lock("job")
        assert lock.acquire(timeout=10)
        fresh_postgres.kill()  # the connection breaks: renewals fail, the lock is lost
        assert lock.lost.wait(TIMEOUT)
        with pytest.raises(tenure.LockLostError):
            lock.release()
    finally:
        client.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "lost" in text
    assert password not in text
    assert password not in caplog.text
