"""Lock names: validation, and the owner ids that make every entry ours alone."""

from __future__ import annotations

import json
import os
import secrets
import socket
import unicodedata

from .errors import ConfigurationError

__all__ = [
    "MAX_NAME_LENGTH",
    "OwnerInfo",
    "check_name",
    "check_namespace",
    "current_pid",
    "new_owner_id",
]

MAX_NAME_LENGTH = 200


def check_name(name: object, *, what: str = "lock name") -> str:
    """Return ``name`` if it is a valid lock name, else raise :class:`ConfigurationError`.

    A name is 1..200 characters of printable text, made of ``/``-separated segments; no segment is
    empty, ``.`` or ``..``, so a name can never escape its namespace on any backend.
    """
    if not isinstance(name, str):
        raise ConfigurationError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ConfigurationError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"{what} is {len(name)} characters long, over the limit of {MAX_NAME_LENGTH}: "
            f"{name[:40]!r}..."
        )
    for ch in name:
        if ch == "\x00":
            raise ConfigurationError(f"{what} {name!r} contains a NUL character")
        if unicodedata.category(ch).startswith("C"):
            raise ConfigurationError(f"{what} {name!r} contains the control character {ch!r}")
    if name.startswith("/"):
        raise ConfigurationError(f"{what} {name!r} must be relative: it may not start with '/'")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise ConfigurationError(
                f"{what} {name!r} has an empty, '.' or '..' segment; "
                "use names like 'reports/nightly'"
            )
    return name


def check_namespace(namespace: object) -> str:
    """A namespace follows the rules of a name (it prefixes every key)."""
    return check_name(namespace, what="namespace")


def new_owner_id() -> str:
    """A random 128-bit owner id, as 32 hex digits."""
    return secrets.token_hex(16)


class OwnerInfo:
    """What a contender tells the backend about itself (owner id, host, pid, value).

    ``meta`` is the same as one JSON string ``{"host", "pid", "value"}`` (for backends that store
    it as is); it is built once per process for the common ``value=None``.
    """

    __slots__ = ("_meta", "host", "owner", "pid", "value")

    def __init__(self, owner: str, value: str | None = None) -> None:
        self.owner = owner
        self.host, self.pid, plain_meta = _local()
        self.value = value
        self._meta = plain_meta if value is None else None

    @property
    def meta(self) -> str:
        if self._meta is None:
            self._meta = json.dumps({"host": self.host, "pid": self.pid, "value": self.value})
        return self._meta

    def __repr__(self) -> str:
        return f"OwnerInfo(owner={self.owner!r}, host={self.host!r}, pid={self.pid})"


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """``os.getpid()`` without a system call per use (the core asks on every acquire, release
    and ``held``); kept right across ``fork()``."""
    return _pid


_local_cache: tuple[str, int, str] | None = None


def _local() -> tuple[str, int, str]:
    """(host name, pid, meta without a value) of this process; recomputed after a fork."""
    global _local_cache
    pid = _pid
    if _local_cache is None or _local_cache[1] != pid:
        host = socket.gethostname()
        _local_cache = (host, pid, json.dumps({"host": host, "pid": pid, "value": None}))
    return _local_cache
