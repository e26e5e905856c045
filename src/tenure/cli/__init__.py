"""The ``tenure`` command line (also ``python -m tenure``).

Commands: ``run`` (CMD under a lock, like ``flock(1)``), ``elect`` (CMD while leader),
``status`` (holder and waiters, or the backend), ``ls`` (every name in use),
``demo`` (lost updates vs the exact total),
``bench`` (latency and throughput on the user's own backend).

Exit codes (sysexits.h, and the shell's conventions):

====  ===========================================================================
0     success (``run``/``elect``: CMD's own exit code is passed through)
64    bad arguments (EX_USAGE), e.g. no ``-- CMD``
69    the backend is unreachable or failed (EX_UNAVAILABLE)
70    the lock or leadership was lost while CMD ran; CMD was stopped (EX_SOFTWARE)
75    the lock could not be had: ``--no-wait`` or ``--timeout`` (EX_TEMPFAIL)
78    bad URL, name or option, or a missing extra (EX_CONFIG)
126   CMD is not executable
127   CMD was not found
128+N CMD died of signal N, or tenure got signal N while waiting
====  ===========================================================================
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

import tenure

from ._bench import cmd_bench
from ._common import (
    EX_CONFIG,
    EX_LOST,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    CLIError,
    Interrupted,
    grpc_fork_support_off,
    print_err,
)
from ._demo import cmd_demo
from ._ls import cmd_ls
from ._run import cmd_elect, cmd_run
from ._status import cmd_status

__all__ = ["main"]

_EXIT_CODES = """\
exit codes:
  CMD's own      run/elect pass CMD's exit code through (128+N if it died of signal N)
  64             bad arguments (e.g. no "-- CMD")
  69             the backend is unreachable or failed
  70             the lock or leadership was lost while CMD ran; CMD was stopped
  75             the lock could not be had (--no-wait, --timeout)
  78             bad URL, name or option, or a missing extra
  126 / 127      CMD is not executable / not found
  128+N          tenure got signal N while waiting (130 for SIGINT, 143 for SIGTERM)
"""

_COMMANDS_WITH_CMD = ("run", "elect")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise _UsageError(message)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    values = [_positive_int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected N or N,N,...: {text!r}")
    return values


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def _build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    common = _Parser(add_help=False)
    common.add_argument(
        "--url",
        default=None,
        help="backend URL (default: $TENURE_URL, else the embedded file backend in "
        "$XDG_STATE_HOME/tenure)",
    )
    common.add_argument("--namespace", default=None, help="key prefix (default: tenure)")

    parser = _Parser(
        prog="tenure",
        description="Distributed locks and leader election from the shell.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tenure {tenure.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run CMD while holding a lock (like flock(1))",
        description=_wrap(
            "Acquire lock NAME, run CMD with TENURE_LOCK and TENURE_TOKEN (the fencing "
            "token) in its environment, release the lock when CMD exits, and exit with CMD's exit "
            "code. Signals (INT, TERM, HUP, QUIT, USR1, USR2) are forwarded to CMD; a keyboard "
            "INT/QUIT from the terminal reaches CMD directly and is not sent twice. If the lock is "
            f"lost, CMD gets SIGTERM, then SIGKILL after --grace seconds, and tenure exits "
            f"{EX_LOST}. If the lock cannot be had (--no-wait, --timeout), CMD is not run "
            f"and tenure exits {EX_TEMPFAIL}."
        ),
        usage="tenure run NAME [options] -- CMD [ARGS...]",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("name", metavar="NAME", help="the lock's name, e.g. reports/nightly")
    run.add_argument(
        "--ttl", type=_positive_seconds, default=None, metavar="S", help="session lease (s)"
    )
    wait = run.add_mutually_exclusive_group()
    wait.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="wait at most S seconds (default: forever)",
    )
    wait.add_argument("--no-wait", action="store_true", help="try once, never wait")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--read", action="store_true", help="take the shared (read) side of rwlock NAME"
    )
    mode.add_argument(
        "--write", action="store_true", help="take the exclusive (write) side of rwlock NAME"
    )
    mode.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="take one of N permits of semaphore NAME (at most N CMDs at once, like "
        "Consul's lock -n)",
    )
    run.add_argument(
        "--grace",
        type=_seconds,
        metavar="S",
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when the lock is lost (default 10)",
    )
    run.add_argument(
        "--min-hold",
        type=_seconds,
        default=None,
        metavar="S",
        help="keep the lock at least S seconds after its grant, even if CMD ends sooner "
        "(kept by the server after tenure exits): a job that cron starts on every replica "
        "runs once. With --no-wait, the replicas that find it taken exit 75 silently",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say why CMD was not run (also with --no-wait --min-hold)",
    )

    elect = sub.add_parser(
        "elect",
        parents=[common],
        help="run CMD only while leader (active/standby)",
        description=_wrap(
            "Campaign in election NAME (a standby waits); as leader run CMD with "
            "TENURE_ELECTION and TENURE_LEADER_TERM in its environment. If leadership is lost, CMD "
            "is stopped (SIGTERM, --grace, SIGKILL) and tenure campaigns again (--once: exits "
            f"{EX_LOST}). When CMD exits on its own, tenure resigns and exits with CMD's code."
        ),
        usage="tenure elect NAME [options] -- CMD [ARGS...]",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    elect.add_argument("name", metavar="NAME", help="the election's name")
    elect.add_argument(
        "--value", default=None, metavar="V", help="published value, e.g. this host's address"
    )
    elect.add_argument(
        "--ttl", type=_positive_seconds, default=None, metavar="S", help="session lease (s)"
    )
    elect.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL",
    )
    elect.add_argument(
        "--once", action="store_true", help=f"exit {EX_LOST} when leadership is lost"
    )

    status = sub.add_parser(
        "status",
        parents=[common],
        help="show a name's holders and waiters, or the backend",
        description=_wrap(
            "With NAME: the holders (with their mode) and waiters of NAME, in every key space "
            "where it is in use (lock, rwlock, semaphore, election), or only in --kind. "
            "Without: the backend's URL (password redacted) and capabilities."
        ),
    )
    status.add_argument("name", metavar="NAME", nargs="?", default=None)
    status.add_argument(
        "--kind",
        choices=["lock", "rwlock", "semaphore", "election"],
        default=None,
        help="look only in this key space (default: every one, showing those in use)",
    )
    status.add_argument("--election", action="store_true", help="same as --kind election")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--watch",
        action="store_true",
        help="follow NAME: redraw on every change, woken by the backend (Ctrl-C to stop)",
    )

    ls = sub.add_parser(
        "ls",
        parents=[common],
        help="list every name that has holders or waiters",
        description=_wrap(
            "Every name of the namespace that has holders or waiters: its kind (lock, rwlock, "
            "semaphore, election), mode, holders (owner, host, pid, token, held for, expires "
            "in), number of waiters and the oldest wait. An unknown namespace lists nothing. "
            "--watch redraws on every change (woken by the backend where it can watch a "
            "namespace, etcd; else it looks again every few seconds)."
        ),
    )
    ls.add_argument("--watch", action="store_true", help="redraw on every change (Ctrl-C to stop)")
    ls.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output (with --watch: one JSON document per line per change)",
    )

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="lost updates without a lock vs the exact total with one",
        description="N processes increment one counter file M times each: first without a "
        "lock (updates get lost), then with tenure (exact, fencing tokens strictly increasing). "
        "Exits 0 when the locked total is exact, else 1.",
    )
    demo.add_argument("--processes", type=_positive_int, default=4, metavar="N")
    demo.add_argument("--increments", type=_positive_int, default=500, metavar="M")
    demo.add_argument("--json", action="store_true", help="machine-readable output")

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="measure tenure on your backend: floor, uncontended, contended",
        description=_wrap(
            "Measure this deployment: the floor (two minimal round trips with the backend's "
            "own client library), uncontended acquire + release (p50, p99, ratio to the floor), "
            "and N local processes contending for one name (acquisitions/s, handoff latency "
            "p50/p99, fairness, overlaps at a counter only the lock protects). Uses a fresh "
            "namespace unless --namespace is given. Exits 1 if any overlap was seen."
        ),
    )
    bench.add_argument(
        "--procs",
        type=_int_list,
        default=[8],
        metavar="N[,N...]",
        help="contending processes per run (default 8; e.g. 2,8,32)",
    )
    bench.add_argument(
        "--seconds", type=_positive_seconds, default=3.0, help="per contended run (default 3)"
    )
    bench.add_argument(
        "--iterations", type=_positive_int, default=1000, help="uncontended samples (default 1000)"
    )
    bench.add_argument(
        "--timeout", type=_positive_seconds, default=10.0, help="per acquire (default 10 s)"
    )
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    return parser, {
        "run": run,
        "elect": elect,
        "status": status,
        "ls": ls,
        "demo": demo,
        "bench": bench,
    }


def _parse(argv: list[str]) -> argparse.Namespace:
    parser, commands = _build_parser()
    if "--" in argv:
        at = argv.index("--")
        head, cmd = argv[:at], argv[at + 1 :]
    else:
        head, cmd = argv, []
    args, extra = parser.parse_known_args(head)
    if extra:
        if args.command in _COMMANDS_WITH_CMD and "--" not in argv:
            commands[args.command].print_usage(sys.stderr)
            raise _UsageError(
                f"unrecognized arguments: {' '.join(extra)} "
                f"(put '--' before the command: tenure {args.command} NAME -- CMD ARGS...)"
            )
        parser.parse_args(head)  # reports the unrecognized arguments
    if args.command in _COMMANDS_WITH_CMD:
        if not cmd:
            commands[args.command].print_usage(sys.stderr)
            raise _UsageError(
                f"{args.command} needs a command after '--', e.g. "
                f"tenure {args.command} {args.name} -- make deploy"
            )
        args.cmd = cmd
    elif "--" in argv:
        args = parser.parse_args(argv)
    return args


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "elect": cmd_elect,
    "status": cmd_status,
    "ls": cmd_ls,
    "demo": cmd_demo,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tenure`` command line with ``argv`` (default ``sys.argv[1:]``: the program
    itself, which also turns gRPC's fork support off, see ``_common``); return the code."""
    if argv is None:
        grpc_fork_support_off()
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(arguments)
    except _UsageError as exc:
        print_err(f"tenure: error: {exc}")
        return EX_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return _HANDLERS[args.command](args)
    except CLIError as exc:
        print_err(f"tenure: error: {exc}")
        return exc.code
    except tenure.ConfigurationError as exc:
        print_err(f"tenure: error: {exc}")
        return EX_CONFIG
    except tenure.BackendError as exc:
        print_err(f"tenure: error: {exc}")
        return EX_UNAVAILABLE
    except tenure.TenureError as exc:
        print_err(f"tenure: error: {exc}")
        return EX_LOST
    except Interrupted as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130
