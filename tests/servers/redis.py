"""Redis: single servers and independent masters for Redlock."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from tests.servers.process import (
    HOST,
    ServerMissing,
    ServerProcess,
    free_port,
    make_temp_dir,
    record_startup,
    start_all,
    tcp_request,
)

__all__ = ["RedisServer", "redis_binary", "redlock_url", "start_redis", "start_redis_masters"]


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise ServerMissing("redis", "redis-server", "redis-server")
    return path


class RedisServer(ServerProcess):
    """A redis-server without persistence, bound to 127.0.0.1."""

    kind = "redis"
    stop_grace = 5.0

    def __init__(self, tmp: Path, port: int | None = None, name: str = "redis") -> None:
        port = port or free_port()
        argv = [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            HOST,
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]
        super().__init__(argv, port=port, log_path=tmp / f"{name}.log", cwd=tmp, name=name)
        self.tmp = tmp

    def probe(self) -> bool:
        return tcp_request(self.port, b"PING\r\n", timeout=0.5).startswith(b"+PONG")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def start_redis(tmp: Path | None = None, *, timeout: float | None = None) -> RedisServer:
    """Start one Redis server in ``tmp`` (a new temp dir, removed by ``close()``, if None)."""
    t0 = time.monotonic()
    owned = tmp is None
    tmp = make_temp_dir("redis") if tmp is None else tmp
    server = RedisServer(tmp)
    if owned:
        server.owned_tmp = tmp
    server.start(timeout)
    record_startup("redis", time.monotonic() - t0)
    return server


def start_redis_masters(
    n: int = 5, tmp: Path | None = None, *, timeout: float | None = None
) -> list[RedisServer]:
    """Start ``n`` independent Redis masters (for Redlock), spawned in parallel.

    Each gets its own temp dir (or a sub-directory of ``tmp``); close them all."""
    servers = []
    for i in range(n):
        if tmp is None:
            d = make_temp_dir(f"redis-m{i}")
        else:
            d = tmp / f"m{i}"
            d.mkdir(parents=True, exist_ok=True)
        s = RedisServer(d, name=f"redis-m{i}")
        if tmp is None:
            s.owned_tmp = d
        servers.append(s)
    t0 = time.monotonic()
    start_all(servers, timeout)
    record_startup(f"redis x{n}", time.monotonic() - t0)
    return servers


def redlock_url(servers: Sequence[RedisServer]) -> str:
    """``redlock://127.0.0.1:p1,127.0.0.1:p2,...``"""
    return "redlock://" + ",".join(s.endpoint for s in servers)
