"""Shared pieces of the CLI: exit codes, errors, connecting, progress display, waiting."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

import tenure
from tenure._sync.backends.file import default_root

__all__ = [
    "EX_CANTEXEC",
    "EX_CONFIG",
    "EX_LOST",
    "EX_NOTFOUND",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "FORWARDED_SIGNALS",
    "CLIError",
    "Changes",
    "Interrupted",
    "Progress",
    "Screen",
    "child_shares_terminal_signals",
    "connect",
    "describe_holder",
    "format_seconds",
    "format_table",
    "held_for",
    "interrupting_signals",
    "is_main_thread",
    "print_err",
    "shown_url",
    "stderr_is_tty",
    "stdout_is_tty",
    "use_colour",
    "wait_in_thread",
]

# Exit codes (sysexits.h where one fits; the shell's conventions for 126/127/128+N).
EX_OK = 0
EX_USAGE = 64  # bad arguments
EX_UNAVAILABLE = 69  # the backend cannot be reached or failed
EX_LOST = 70  # EX_SOFTWARE: the lock (or leadership) was lost while CMD ran; CMD was stopped
EX_TEMPFAIL = 75  # the lock could not be had (--no-wait, --timeout)
EX_CONFIG = 78  # bad URL, name, option, missing extra
EX_CANTEXEC = 126  # CMD is not executable
EX_NOTFOUND = 127  # CMD not found

#: Signals ``run``/``elect`` forward to CMD.
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


class CLIError(Exception):
    """An expected failure: ``tenure: error: <message>`` on stderr, then exit ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(BaseException):
    """tenure itself got a terminating signal while it was not running CMD."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# grpcio 1.80 and later (grpc/grpc#43055): with gRPC's fork support on, a child started with a
# ``preexec_fn`` (``tenure run`` sets CMD's death signal in one) can crash in a poller thread
# that gRPC restarts in the child, before the child runs CMD (SIGABRT, exit 134; measured here:
# 14 children in 400 with a channel busy). This program forks only to exec, so when it runs as
# the program it turns gRPC's fork support off before anything imports grpc, unless the user
# chose; CMD gets the environment as it was.
_GRPC_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
_grpc_fork_support_ours = False  # we set it (the user had not)


def grpc_fork_support_off() -> None:
    """Turn gRPC's fork support off for this process, unless the user set it (see above)."""
    global _grpc_fork_support_ours
    if _GRPC_FORK_SUPPORT not in os.environ:
        os.environ[_GRPC_FORK_SUPPORT] = "false"
        _grpc_fork_support_ours = True


def child_environment(**extra: str) -> dict[str, str]:
    """CMD's environment: ours as the user gave it, and ``extra``."""
    env = dict(os.environ, **extra)
    if _grpc_fork_support_ours:
        env.pop(_GRPC_FORK_SUPPORT, None)
    return env


def connect(url: str | None, namespace: str | None) -> tenure.Client:
    """``tenure.connect`` with the CLI's common options."""
    options: dict[str, Any] = {}
    if namespace is not None:
        options["namespace"] = namespace
    return tenure.connect(url, **options)


def shown_url(client: tenure.Client) -> str:
    """The client's URL for display: redacted, with the default file directory spelled out."""
    if client.url == "file://":
        return f"file://{default_root()}"
    return client.url


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class interrupting_signals:
    """While active, the forwarded signals raise :class:`Interrupted` in the main thread.

    Used while tenure waits for a lock or leadership, so that SIGTERM, SIGHUP... end tenure
    cleanly (client closed, exit 128+N) instead of killing it outright.
    """

    def __init__(self) -> None:
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if not is_main_thread():
            return
        for sig in FORWARDED_SIGNALS:
            self._saved[sig] = signal.signal(sig, _raise_interrupted)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


# Formatting.


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def held_for(holder: tenure.Holder, now: dt.datetime | None = None) -> float | None:
    if holder.acquired_at is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (now - holder.acquired_at).total_seconds())


def describe_holder(holder: tenure.Holder | None, *, token_word: str = "token") -> str:
    """``pid 123 on host-a (token 7)``, or ``an unknown holder``."""
    if holder is None:
        return "an unknown holder"
    return f"pid {holder.pid} on {holder.host} ({token_word} {holder.token})"


class Progress:
    """One status line on a terminal, redrawn in place at most a few times a second."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._shown = False

    def show(self, text: str) -> None:
        self._stream.write("\r" + text + "\x1b[K")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def wait_in_thread(
    attempt: Callable[[], bool],
    *,
    describe: Callable[[float], str] | None,
    show_after: float = 1.0,
    refresh: float = 0.25,
) -> bool:
    """Run the blocking ``attempt()`` (one backend wait, no polling) and return its result.

    The wait runs in a helper thread so that the main thread stays free for signals (which raise
    :class:`Interrupted`) and, when ``describe`` is given (stderr is a terminal), for a progress
    line that appears after ``show_after`` seconds and is redrawn every ``refresh`` seconds.
    Keeping one blocking call (rather than a loop of short ones) keeps our place in a FIFO
    queue on the backends that have one.
    """
    result: list[bool] = []
    error: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            result.append(attempt())
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=work, name="tenure-cli-wait", daemon=True)
    started = time.monotonic()
    worker.start()
    progress = Progress(sys.stderr) if describe is not None else None
    try:
        if progress is None or describe is None:
            done.wait()
        elif not done.wait(show_after):
            while not done.wait(refresh):
                progress.show(describe(time.monotonic() - started))
    finally:
        if progress is not None:
            progress.clear()
    if error:
        raise error[0]
    return result[0]


def print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_shares_terminal_signals() -> bool:
    """Whether our process group is the foreground group of a controlling terminal.

    Then a keyboard signal (Ctrl-C, Ctrl-\\) already reached CMD, which is in our group, and
    forwarding it would deliver it twice.
    """
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


# Following changes (``ls --watch``, ``status --watch``).


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def use_colour() -> bool:
    """Colour only on a terminal, and not when ``NO_COLOR`` is set (no-color.org)."""
    return stdout_is_tty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class Changes:
    """Follows change streams (``client.changes(...)``), each in a daemon thread, and sets
    ``event`` on every change; ``wait(timeout)`` returns True once something changed (and raises
    what a stream raised, e.g. ``BackendUnavailableError``)."""

    def __init__(self, sources: list[Callable[[], Any]]) -> None:
        self.event = threading.Event()
        self._errors: list[BaseException] = []
        for source in sources:
            threading.Thread(
                target=self._follow, args=(source,), name="tenure-cli-watch", daemon=True
            ).start()

    def _follow(self, source: Callable[[], Any]) -> None:
        try:
            for _ in source():
                self.event.set()
        except BaseException as exc:  # reported by wait() in the main thread
            self._errors.append(exc)
            self.event.set()

    def wait(self, timeout: float | None) -> bool:
        changed = self.event.wait(timeout)
        if self._errors:
            raise self._errors[0]
        self.event.clear()
        return changed


class Screen:
    """Redraws a whole listing in place on a terminal; appends it when piped."""

    def __init__(self) -> None:
        self.tty = stdout_is_tty()

    def show(self, text: str) -> None:
        try:
            if self.tty:
                sys.stdout.write("\x1b[H\x1b[2J" + text)
            else:
                sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (| head): exit as if by SIGPIPE, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Interrupted(signal.SIGPIPE) from None


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]], *, bold: bool) -> str:
    """Columns aligned to their widest cell, two spaces apart, the header bold if asked."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header, *rows]):
        line = "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        lines.append(f"\x1b[1m{line}\x1b[0m" if bold and n == 0 else line)
    return "\n".join(lines) + "\n"
