"""A fault-injecting TCP proxy (asyncio in a background thread).

Modes, switchable at any time from any thread:

* pass-through (the default, and after :meth:`TcpProxy.heal`);
* :meth:`TcpProxy.delay` — every chunk, in both directions, is delivered ``seconds`` late;
* :meth:`TcpProxy.blackhole` — connections are accepted and read, nothing is forwarded in
  either direction and nothing is closed (a network partition);
* :meth:`TcpProxy.drop_next_reply` — the next chunk coming back from the server is
  swallowed, once (call it n times to drop n chunks); with ``sever=True`` its connection is
  then closed (how a lost reply looks on a protocol that cannot resynchronise, e.g.
  PostgreSQL's: the request was executed, the client never learns the outcome);
* :meth:`TcpProxy.sever` — close every current connection (new ones are still accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from tests.servers.process import HOST, free_port

__all__ = ["TcpProxy"]

_CHUNK = 65536


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []

    async def close(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for w in self.writers:
            w.close()
        for w in self.writers:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await w.wait_closed()
        others = [t for t in self.tasks if t is not current]
        await asyncio.gather(*others, return_exceptions=True)


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port``."""

    def __init__(
        self, target_host: str, target_port: int, *, port: int | None = None, host: str = HOST
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port or free_port()
        self._mode = "pass"
        self._delay = 0.0
        self._drop_replies = 0
        self._sever_on_drop = False
        self._drop_lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self.accepted = 0  # connections accepted so far
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy:{self.port}->{target_port}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    # -- control (any thread) ------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def connections(self) -> int:
        """Number of currently open proxied connections."""
        return len(self._conns)

    def url_for(self, scheme: str, path: str = "") -> str:
        """``scheme://127.0.0.1:PORT`` + ``path`` (e.g. ``url_for("redis", "/0")``)."""
        return f"{scheme}://{self.host}:{self.port}{path}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def delay(self, seconds: float) -> None:
        """Deliver every chunk in both directions ``seconds`` late."""
        self._delay = seconds
        self._mode = "delay"

    def blackhole(self) -> None:
        """Read and discard everything in both directions; keep connections open."""
        self._mode = "blackhole"

    def drop_next_reply(self, *, sever: bool = False) -> None:
        """Swallow the next chunk coming back from the server (once per call); with
        ``sever``, close that chunk's connection too."""
        with self._drop_lock:
            self._drop_replies += 1
            self._sever_on_drop = sever

    def heal(self) -> None:
        """Back to pass-through (pending drop_next_reply calls are cancelled too)."""
        self._mode = "pass"
        self._delay = 0.0
        with self._drop_lock:
            self._drop_replies = 0

    def sever(self, timeout: float = 5.0) -> None:
        """Close every current connection (both sides)."""
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, close every connection and stop the thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # loop already stopped
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.endpoint} -> {self.target_host}:{self.target_port} "
            f"mode={self._mode} conns={len(self._conns)}>"
        )

    # -- event loop thread ---------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
            )
        except BaseException as exc:
            self._start_error = exc
            self._loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all()
        if self._server is not None:
            await self._server.wait_closed()
        self._loop.call_soon(self._loop.stop)

    async def _close_all(self) -> None:
        conns = list(self._conns)
        self._conns.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        conn.tasks = [
            asyncio.create_task(self._pump(conn, reader, up_writer, reply=False)),
            asyncio.create_task(self._pump(conn, up_reader, writer, reply=True)),
        ]

    def _take_drop(self) -> str:
        """ "" (forward the chunk), "drop", or "sever" (drop it and close the connection)."""
        with self._drop_lock:
            if self._drop_replies > 0:
                self._drop_replies -= 1
                return "sever" if self._sever_on_drop else "drop"
            return ""

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        reply: bool,
    ) -> None:
        """Read from ``src``; queue each chunk with its due time; a helper task delivers."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, dst))
        try:
            while True:
                try:
                    data = await src.read(_CHUNK)
                except OSError:
                    data = b""
                if not data:
                    queue.put_nowait((loop.time() + self._delay_now(), None))
                    await deliver
                    break
                if self._mode == "blackhole":
                    continue
                if reply and (drop := self._take_drop()):
                    if drop == "sever":
                        break
                    continue
                queue.put_nowait((loop.time() + self._delay_now(), data))
        finally:
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await deliver
        # one side is done: close the whole connection
        if conn in self._conns:
            self._conns.discard(conn)
            await conn.close()

    def _delay_now(self) -> float:
        return self._delay if self._mode == "delay" else 0.0

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes | None]], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                return
            if self._mode == "blackhole":
                continue
            dst.write(data)
            await dst.drain()
