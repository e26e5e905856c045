"""Which driver serves which URL scheme, imported lazily (also from entry points).

Third-party drivers register under the entry-point group ``tenure.backends`` as
``scheme = "package.module:AsyncDriverClass"``; the sync twin is looked up by replacing the last
``_async`` segment of the module path with ``_sync``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigurationError

__all__ = ["known_schemes", "load_driver"]

# scheme -> (module under tenure.<flavour>.backends, class name, extra that installs its client)
_BUILTIN: dict[str, tuple[str, str, str | None]] = {
    "file": ("file", "FileDriver", None),
    "redis": ("redis", "RedisDriver", "redis"),
    "rediss": ("redis", "RedisDriver", "redis"),
    "redis+sentinel": ("redis", "RedisDriver", "redis"),
    "rediss+sentinel": ("redis", "RedisDriver", "redis"),
    "postgresql": ("postgres", "PostgresDriver", "postgres"),
    "postgres": ("postgres", "PostgresDriver", "postgres"),
    "zookeeper": ("zookeeper", "ZooKeeperDriver", "zookeeper"),
    "zk": ("zookeeper", "ZooKeeperDriver", "zookeeper"),
    "etcd": ("etcd", "EtcdDriver", "etcd"),
    "etcds": ("etcd", "EtcdDriver", "etcd"),
    "redlock": ("redlock", "RedlockDriver", "redis"),
    "redlock+rediss": ("redlock", "RedlockDriver", "redis"),
}


def known_schemes() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group="tenure.backends"))
    return sorted(names)


def load_driver(scheme: str, flavour: str) -> Any:
    """The driver class for ``scheme`` in ``flavour`` (``"_async"`` or ``"_sync"``)."""
    if scheme in _BUILTIN:
        module_name, class_name, extra = _BUILTIN[scheme]
        path = f"tenure.{flavour}.backends.{module_name}"
    else:
        found = [ep for ep in entry_points(group="tenure.backends") if ep.name == scheme]
        if not found:
            raise ConfigurationError(
                f"unknown URL scheme {scheme + '://'!r}; known: "
                + ", ".join(s + "://" for s in known_schemes())
            )
        module_path, _, class_name = found[0].value.partition(":")
        head, sep, tail = module_path.rpartition("._async")
        path = head + "." + flavour + tail if sep and flavour == "_sync" else module_path
        extra = None
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        if extra is not None and exc.name is not None and not exc.name.startswith("tenure"):
            raise ConfigurationError(
                f"the {scheme}:// backend needs the {exc.name!r} package: "
                f"pip install 'tenure[{extra}]'"
            ) from exc
        raise
    return getattr(module, class_name)
