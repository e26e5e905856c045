"""Suite-wide fixtures: the throw-away servers from tests/servers (see tests/servers/plugin.py)."""

from tests.servers.plugin import *  # noqa: F403
