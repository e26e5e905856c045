"""PostgreSQL: a throw-away cluster (initdb once per process, copied per server)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.servers.process import (
    HOST,
    ServerMissing,
    ServerProcess,
    free_port,
    make_temp_dir,
    record_startup,
    remove_temp_dir,
    wait_until,
)

__all__ = [
    "PgBouncer",
    "PostgresServer",
    "PostgresStandby",
    "postgres_bindir",
    "postgres_os_user",
    "start_pgbouncer",
    "start_postgres",
    "start_postgres_standby",
]

SUPERUSER = "postgres"  # the database role (initdb -U); independent of the OS user
FALLBACK_OS_USER = "tenure-test"
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "listen_addresses": HOST,
    "logging_collector": "off",
    "log_min_messages": "warning",
    "unix_socket_permissions": "0777",
}


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/*/bin with initdb, postgres and pg_isready."""

    def version(p: Path) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in p.parent.name.split("."))
        except ValueError:
            return (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all((bindir / b).is_file() for b in ("initdb", "postgres", "pg_isready")):
            return bindir
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerMissing("postgres", "initdb/postgres under /usr/lib/postgresql/*/bin", "postgresql")


def postgres_os_user() -> str | None:
    """The OS user to run postgres as: None (ourselves) unless root, which postgres refuses.

    As root: the existing ``postgres`` user, else ``tenure-test`` (created if missing)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            FALLBACK_OS_USER,
        ],
        check=True,
        capture_output=True,
    )
    return FALLBACK_OS_USER


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


_template_lock = threading.Lock()
_template: Path | None = None


def _template_data_dir(bindir: Path, user: str | None) -> Path:
    """initdb once per process; every server copies the result (much faster than initdb)."""
    global _template
    with _template_lock:
        if _template is not None and (_template / "data" / "PG_VERSION").exists():
            return _template / "data"
        tmp = make_temp_dir("pg-template")
        _chown_tree(tmp, user)
        data = tmp / "data"
        proc = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=tmp,
            user=user,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        _template = tmp
        return data


class PostgresServer(ServerProcess):
    """A postgres postmaster on 127.0.0.1 with trust auth; stopped with SIGINT (fast shutdown:
    SIGTERM would wait for every client to disconnect)."""

    kind = "postgres"
    stop_signal = signal.SIGINT
    stop_grace = 10.0

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.bindir = postgres_bindir()
        self.os_user = postgres_os_user()
        port = port or free_port()
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.socket_dir = tmp
        if not self.data_dir.exists():
            shutil.copytree(_template_data_dir(self.bindir, self.os_user), self.data_dir)
        _chown_tree(tmp, self.os_user)
        self.data_dir.chmod(0o700)
        argv = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-k",
            str(self.socket_dir),
            "-h",
            HOST,
            "-p",
            str(port),
        ]
        for key, value in SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        super().__init__(
            argv,
            port=port,
            log_path=tmp / "postgres.log",
            cwd=tmp,
            run_as=self.os_user,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            name="postgres",
        )

    def probe(self) -> bool:
        proc = subprocess.run(
            [
                str(self.bindir / "pg_isready"),
                "-q",
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return proc.returncode == 0

    @property
    def user(self) -> str:
        """The database superuser role."""
        return SUPERUSER

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``"""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"


def start_postgres(tmp: Path | None = None, *, timeout: float | None = None) -> PostgresServer:
    """Start a PostgreSQL server in ``tmp`` (a new temp dir, removed by ``close()``, if None)."""
    t0 = time.monotonic()
    owned = tmp is None
    tmp = make_temp_dir("pg") if tmp is None else tmp
    server = PostgresServer(tmp)
    if owned:
        server.owned_tmp = tmp
    server.start(timeout)
    record_startup("postgres", time.monotonic() - t0)  # includes set-up (initdb/copy)
    return server


class PostgresStandby(PostgresServer):
    """An asynchronous streaming standby of a :class:`PostgresServer` (``pg_basebackup -R``:
    a copy of the primary's data dir, ``standby.signal`` and ``primary_conninfo``), on a port
    of its own; a hot standby (read-only queries) until :meth:`promote`."""

    kind = "postgres-standby"

    def __init__(self, tmp: Path, primary: PostgresServer) -> None:
        bindir = postgres_bindir()
        user = postgres_os_user()
        _chown_tree(tmp, user)
        proc = subprocess.run(
            [
                str(bindir / "pg_basebackup"),
                *("-h", primary.host, "-p", str(primary.port), "-U", SUPERUSER),
                *("-D", str(tmp / "data")),
                "--write-recovery-conf",  # standby.signal + primary_conninfo
                "--wal-method=stream",
                "--checkpoint=fast",  # not a spread checkpoint: seconds otherwise
                "--no-sync",
            ],
            cwd=tmp,
            user=user,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed ({proc.returncode}):\n{proc.stderr}")
        super().__init__(tmp)
        self.name = "postgres-standby"

    def _sql(self, statement: str) -> object:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement)
            row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]

    def replayed(self, lsn: str) -> bool:
        """True once this standby has replayed the primary's WAL up to ``lsn``."""
        return bool(self._sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"))

    def detach(self, timeout: float = 10.0) -> None:
        """Stop streaming from the primary, as a network cut would: the standby keeps its data
        and misses all later WAL."""
        self._sql("ALTER SYSTEM SET primary_conninfo = ''")
        self._sql("SELECT pg_reload_conf()")  # the WAL receiver stops (reloadable since PG 13)
        wait_until(
            lambda: not self._sql("SELECT count(*) FROM pg_stat_wal_receiver"),
            timeout,
            "the standby's WAL receiver stopped",
        )

    def promote(self, timeout: float = 30.0) -> None:
        """Make this standby a primary (``pg_promote``), waiting until it accepts writes."""
        seconds = max(1, int(timeout))
        if not self._sql(f"SELECT pg_promote(true, {seconds})"):
            raise RuntimeError(f"{self.name} was not promoted within {seconds} s")


def start_postgres_standby(
    primary: PostgresServer, *, timeout: float | None = None
) -> PostgresStandby:
    """Start an asynchronous streaming standby of ``primary`` in a new temp dir (removed, with
    the process, by ``close()``). ``primary`` must allow replication connections (the defaults
    of initdb do: ``wal_level=replica``, ``max_wal_senders=10``, a ``replication`` line in
    pg_hba.conf for 127.0.0.1)."""
    t0 = time.monotonic()
    tmp = make_temp_dir("pg-standby")
    try:
        standby = PostgresStandby(tmp, primary)
    except BaseException:
        remove_temp_dir(tmp)
        raise
    standby.owned_tmp = tmp
    standby.start(timeout)
    record_startup("postgres standby", time.monotonic() - t0)  # includes pg_basebackup
    return standby


class PgBouncer(ServerProcess):
    """PgBouncer in front of a :class:`PostgresServer` (trust auth), in ``pool_mode``."""

    kind = "pgbouncer"

    def __init__(
        self, tmp: Path, target: PostgresServer, pool_mode: str, ignore_options: bool
    ) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).is_file():
            raise ServerMissing("pgbouncer", "pgbouncer", "pgbouncer")
        port = free_port()
        user = postgres_os_user()
        (tmp / "userlist.txt").write_text(f'"{SUPERUSER}" ""\n')
        ignored = "extra_float_digits,options" if ignore_options else "extra_float_digits"
        (tmp / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"postgres = host={target.host} port={target.port} dbname=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {tmp / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\nignore_startup_parameters = {ignored}\n"
        )
        _chown_tree(tmp, user)
        super().__init__(
            [binary, str(tmp / "pgbouncer.ini")],
            port=port,
            log_path=tmp / "pgbouncer.log",
            cwd=tmp,
            run_as=user,
            name="pgbouncer",
        )

    def probe(self) -> bool:
        import socket

        with socket.create_connection((self.host, self.port), timeout=1):
            return True

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"


def start_pgbouncer(
    target: PostgresServer, *, pool_mode: str = "transaction", ignore_options: bool = False
) -> PgBouncer:
    """Start PgBouncer in front of ``target`` (closed, with its temp dir, by ``close()``)."""
    tmp = make_temp_dir("pgbouncer")
    bouncer = PgBouncer(tmp, target, pool_mode, ignore_options)
    bouncer.owned_tmp = tmp
    bouncer.start()
    return bouncer
