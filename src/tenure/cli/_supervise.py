"""Running CMD as a child while a lock (or leadership) is held, and stopping it when lost."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ._common import (
    EX_CANTEXEC,
    EX_NOTFOUND,
    FORWARDED_SIGNALS,
    CLIError,
    child_shares_terminal_signals,
    is_main_thread,
    print_err,
)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

__all__ = ["Outcome", "supervise"]

_KEYBOARD_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How CMD ended: its shell-style exit ``code`` and whether tenure stopped it (``lost``)."""

    code: int
    lost: bool


def exit_code(returncode: int) -> int:
    """``Popen.returncode`` as a shell reports it: 128+N for a child killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def supervise(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    grace: float,
    on_lost: Callable[[Callable[[], None]], None],
    lost_message: Callable[[], str],
) -> Outcome:
    """Run ``argv``; forward signals to it; stop it (TERM, ``grace``, KILL) if the lock is lost.

    ``on_lost(callback)`` registers ``callback`` to be called (from any thread) when the lock is
    lost; ``lost_message()`` says why, for stderr. Raises :class:`CLIError` (126/127) if CMD
    cannot be started. Returns once CMD has exited.
    """
    wake = threading.Event()
    exited = threading.Event()
    lost = threading.Event()
    state: dict[str, Any] = {"proc": None, "pending": []}

    def send(signum: int) -> None:
        proc: subprocess.Popen[bytes] | None = state["proc"]
        if proc is None:
            state["pending"].append(signum)
            return
        if exited.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum in _KEYBOARD_SIGNALS and child_shares_terminal_signals():
            return  # the terminal sent it to CMD's process group (ours) already
        send(signum)

    saved: dict[signal.Signals, Any] = {}
    if is_main_thread():
        for sig in FORWARDED_SIGNALS:
            saved[sig] = signal.signal(sig, forward)
    try:
        try:
            proc = subprocess.Popen(list(argv), env=dict(env), preexec_fn=_die_with_us())  # noqa: PLW1509
        except FileNotFoundError:
            raise CLIError(f"{argv[0]}: command not found", EX_NOTFOUND) from None
        except PermissionError:
            raise CLIError(f"{argv[0]}: permission denied", EX_CANTEXEC) from None
        except OSError as exc:
            code = EX_CANTEXEC if exc.errno in (errno.ENOEXEC, errno.EISDIR) else EX_NOTFOUND
            raise CLIError(f"{argv[0]}: cannot execute: {exc.strerror}", code) from None
        state["proc"] = proc

        def reap() -> None:
            proc.wait()
            exited.set()
            wake.set()

        threading.Thread(target=reap, name="tenure-cli-child", daemon=True).start()

        def lost_callback() -> None:
            lost.set()
            wake.set()

        on_lost(lost_callback)
        for signum in state["pending"]:
            send(signum)
        state["pending"] = []

        wake.wait()  # signal handlers (forwarding) run while the main thread waits here
        if exited.is_set() or not lost.is_set():
            exited.wait()
            return Outcome(exit_code(proc.returncode), lost=False)

        print_err(
            f"tenure: {lost_message()}; stopping CMD (pid {proc.pid}) with SIGTERM"
            + (f", SIGKILL after {grace:g} s" if grace > 0 else "")
        )
        send(signal.SIGTERM)
        if not exited.wait(grace):
            print_err(f"tenure: CMD (pid {proc.pid}) still running after {grace:g} s: SIGKILL")
            send(signal.SIGKILL)
            exited.wait()
        return Outcome(exit_code(proc.returncode), lost=True)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _die_with_us() -> Callable[[], None] | None:
    """In CMD, before exec: ask Linux to SIGKILL CMD if tenure itself dies (even by SIGKILL).

    Without this, a SIGKILLed ``tenure run``/``elect`` would leave CMD running unsupervised while
    another process takes the lock. SIGKILL, not SIGTERM: on the file backend the lock is free the
    moment tenure dies, so CMD must stop at once. Only CMD itself is covered, not its children.
    The death signal follows the thread that forked, so it is used from the main thread only.
    """
    if not sys.platform.startswith("linux") or not is_main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # tenure died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return set_death_signal
