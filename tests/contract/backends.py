"""The backends the contract suite runs against, and how a test reaches each one.

A :class:`Backend` gives a URL with a fresh namespace per test, the backend's capabilities, a
short TTL for loss tests, and ``steal(name, kind='lock')``: delete a lock's (or an election's)
entry behind its holder's back (what an operator or a split brain would do), so tests can prove
that loss is noticed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tenure import Capabilities
from tenure._async.backends.file import FileDriver, _stem

#: Backends under contract; each server backend adds itself here as it lands.
BACKENDS = ["file", "redis", "redlock"]


@dataclass
class Backend:
    name: str
    url: str
    capabilities: Capabilities
    ttl: float
    steal: Callable[..., None]

    def __repr__(self) -> str:
        return f"Backend({self.name})"


def make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    namespace = "t" + uuid.uuid4().hex[:10]
    if name == "file":
        root = tmp_path / "locks"

        def steal(lock_name: str, kind: str = "lock") -> None:
            (root / namespace / kind / f"{_stem(lock_name)}.lock").unlink()

        return Backend(
            name,
            f"file://{root}?namespace={namespace}",
            FileDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    if name == "redis":
        import redis

        from tenure._async.backends.redis import RedisDriver

        server = request.getfixturevalue("redis_server")

        def steal(lock_name: str, kind: str = "lock") -> None:
            with redis.Redis(host=server.host, port=server.port) as r:
                assert r.delete(f"{namespace}:{{{kind}/{lock_name}}}:holder") == 1

        return Backend(
            name,
            f"{server.url}?namespace={namespace}",
            RedisDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    if name == "redlock":
        import redis

        from tenure._async.backends.redlock import RedlockDriver
        from tests.servers import redlock_url

        masters = request.getfixturevalue("redis_masters")

        def steal(lock_name: str, kind: str = "lock") -> None:
            key = f"{namespace}:{{{kind}/{lock_name}}}:holder"
            deleted = 0
            for master in masters:
                with redis.Redis(host=master.host, port=master.port) as r:
                    deleted += r.delete(key)
            assert deleted >= len(masters) // 2 + 1

        return Backend(
            name,
            f"{redlock_url(masters)}?namespace={namespace}",
            RedlockDriver.capabilities,
            ttl=1.0,
            steal=steal,
        )
    raise AssertionError(f"no contract set-up for backend {name!r}")
