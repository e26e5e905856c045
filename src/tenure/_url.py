"""Parsing backend URLs such as ``etcd://u:p@h1:2379,h2:2379/?namespace=app1``.

Pure: no I/O. Passwords are kept out of ``repr`` and of every message (see ``redacted``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_URL_ENV",
    "ParsedURL",
    "bool_option",
    "number_option",
    "parse_url",
    "seconds_option",
]

DEFAULT_URL_ENV = "TENURE_URL"


@dataclass(frozen=True, slots=True)
class ParsedURL:
    scheme: str
    hosts: tuple[tuple[str, int | None], ...]
    path: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (for messages and ``repr``)."""
        auth = ""
        if self.username is not None or self.password is not None:
            auth = (self.username or "") + (":***" if self.password is not None else "") + "@"
        hosts = ",".join(_format_host(h, p) for h, p in self.hosts)
        return f"{self.scheme}://{auth}{hosts}{self.path}"

    def hosts_with_default(self, port: int) -> list[tuple[str, int]]:
        hosts = self.hosts or (("127.0.0.1", None),)
        return [(h or "127.0.0.1", p if p is not None else port) for h, p in hosts]


def _format_host(host: str, port: int | None) -> str:
    text = f"[{host}]" if ":" in host else host
    return text if port is None else f"{text}:{port}"


def parse_url(url: str | None) -> ParsedURL:
    """Parse ``url`` (None: ``$TENURE_URL``, else the embedded file backend)."""
    if url is None:
        url = os.environ.get(DEFAULT_URL_ENV) or "file://"
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str, not {type(url).__name__}")
    if "://" not in url:
        raise ConfigurationError(
            f"not a URL: {url.split('@')[-1]!r}; expected e.g. 'redis://127.0.0.1:6379' or 'file:///tmp/locks'"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if not scheme.replace("+", "").replace("-", "").isalnum():
        raise ConfigurationError(f"bad URL scheme {scheme!r}")
    try:
        split = urlsplit("x://" + rest)
    except ValueError as exc:
        raise ConfigurationError(f"bad {scheme}:// URL: {exc}") from None
    netloc = split.netloc
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    hosts: list[tuple[str, int | None]] = []
    if netloc:
        for item in netloc.split(","):
            hosts.append(_parse_host(item, scheme))
    try:
        query = dict(
            parse_qsl(split.query, keep_blank_values=True, strict_parsing=bool(split.query))
        )
    except ValueError as exc:
        raise ConfigurationError(f"bad query string in {scheme}:// URL: {exc}") from None
    return ParsedURL(
        scheme=scheme,
        hosts=tuple(hosts),
        path=unquote(split.path),
        username=username,
        password=password,
        query=query,
    )


def _parse_host(item: str, scheme: str) -> tuple[str, int | None]:
    if not item:
        raise ConfigurationError(f"empty host in {scheme}:// URL")
    if item.startswith("["):
        host, sep, port_text = item[1:].partition("]")
        if not sep:
            raise ConfigurationError(f"unclosed '[' in host {item!r}")
        port_text = port_text.removeprefix(":")
    elif item.count(":") > 1:
        raise ConfigurationError(f"IPv6 address {item!r} must be written in brackets: [addr]:port")
    else:
        host, _, port_text = item.partition(":")
    if not port_text:
        return host, None
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"bad port {port_text!r} in host {item!r}") from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"port {port} out of range in host {item!r}")
    return host, port


def seconds_option(options: dict[str, str], name: str, default: float) -> float:
    """A driver's duration option (``?name=1.5``): a number of seconds > 0, else ``default``."""
    return _number_option(options, name, default, unit=" seconds", positive=True)


def bool_option(options: dict[str, str], name: str, default: bool = False) -> bool:
    """A driver's on/off option (``?name=true``): true/false, 1/0, yes/no, on/off."""
    text = options.get(name)
    if text is None:
        return default
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {text!r}")


def number_option(options: dict[str, str], name: str, default: float) -> float:
    """A driver's plain numeric option (``?name=0.01``): a number >= 0, else ``default``."""
    return _number_option(options, name, default, unit="", positive=False)


def _number_option(
    options: dict[str, str], name: str, default: float, *, unit: str, positive: bool
) -> float:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number{unit}, got {text!r}") from None
    if positive and value <= 0:
        raise ConfigurationError(f"{name} must be > 0{unit}, got {value}")
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0{unit}, got {value}")
    return value
