"""etcd: single nodes and n-node clusters with short election timeouts."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.servers.process import (
    HOST,
    ServerGroup,
    ServerMissing,
    ServerProcess,
    free_port,
    make_temp_dir,
    record_startup,
    start_all,
    wait_until,
)

__all__ = ["EtcdCluster", "EtcdNode", "etcd_binary", "start_etcd_cluster"]

HEARTBEAT_MS = 50
ELECTION_MS = 500


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise ServerMissing("etcd", "etcd", "etcd-server")
    return path


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 1.0) -> Any:
    """GET (body None) or POST a JSON body; return the decoded JSON reply."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class EtcdNode(ServerProcess):
    """One etcd member; ``port`` is its client port."""

    kind = "etcd"
    stop_grace = 10.0

    def __init__(
        self,
        name: str,
        tmp: Path,
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        token: str,
    ) -> None:
        self.client_url = f"http://{HOST}:{client_port}"
        self.peer_url = f"http://{HOST}:{peer_port}"
        self.peer_port = peer_port
        self.data_dir = tmp / f"{name}.etcd"
        argv = [
            etcd_binary(),
            "--name",
            name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            token,
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        super().__init__(argv, port=client_port, log_path=tmp / f"{name}.log", cwd=tmp, name=name)

    def probe(self) -> bool:
        return bool(http_json(f"{self.client_url}/health", timeout=0.5).get("health") == "true")

    def status(self, timeout: float = 0.5) -> dict[str, Any]:
        """``/v3/maintenance/status`` of this member (raises if it does not answer)."""
        result: dict[str, Any] = http_json(
            f"{self.client_url}/v3/maintenance/status", {}, timeout=timeout
        )
        return result

    def is_leader(self) -> bool:
        st = self.status()
        return bool(st.get("leader")) and st.get("leader") == st["header"]["member_id"]

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"


class EtcdCluster(ServerGroup):
    """``n`` etcd members on 127.0.0.1; ``nodes`` are :class:`EtcdNode` objects."""

    def __init__(self, nodes: list[EtcdNode], tmp: Path, owns_tmp: bool) -> None:
        super().__init__(nodes, tmp, owns_tmp)
        self.nodes = nodes

    @property
    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes]

    @property
    def client_urls(self) -> list[str]:
        return [n.client_url for n in self.nodes]

    @property
    def url(self) -> str:
        """``etcd://127.0.0.1:p1,127.0.0.1:p2,...``"""
        return "etcd://" + ",".join(self.endpoints)

    def leader(self) -> EtcdNode | None:
        """The live member that reports itself leader, or None (e.g. mid-election)."""
        for node in self.nodes:
            if not node.alive or node.paused:
                continue
            try:
                if node.is_leader():
                    return node
            except OSError:
                continue
        return None

    def wait_for_leader(self, timeout: float = 10.0) -> EtcdNode:
        node = wait_until(self.leader, timeout, "etcd leader")
        assert isinstance(node, EtcdNode)
        return node

    def _live_node(self) -> EtcdNode:
        for node in self.nodes:
            if node.alive and not node.paused:
                return node
        raise RuntimeError("no live etcd member")

    def put(self, key: str, value: str, timeout: float = 2.0) -> None:
        """Write through the HTTP gateway of a live member (for tests)."""
        http_json(
            f"{self._live_node().client_url}/v3/kv/put",
            {"key": _b64(key), "value": _b64(value)},
            timeout=timeout,
        )

    def get(self, key: str, timeout: float = 2.0) -> str | None:
        """Linearizable read through the HTTP gateway of a live member (for tests)."""
        reply = http_json(
            f"{self._live_node().client_url}/v3/kv/range", {"key": _b64(key)}, timeout=timeout
        )
        kvs = reply.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def start_etcd_cluster(
    n: int = 1, tmp: Path | None = None, *, timeout: float | None = None
) -> EtcdCluster:
    """Start ``n`` etcd members (spawned together) and wait until each reports healthy."""
    owns = tmp is None
    tmp = make_temp_dir(f"etcd{n}") if tmp is None else tmp
    ports = [(f"etcd{i}", free_port(), free_port()) for i in range(n)]
    initial = ",".join(f"{name}=http://{HOST}:{pp}" for name, _, pp in ports)
    token = f"tenure-{uuid.uuid4().hex[:12]}"
    nodes = [EtcdNode(name, tmp, cp, pp, initial, token) for name, cp, pp in ports]
    cluster = EtcdCluster(nodes, tmp, owns)
    try:
        cluster.ready_seconds = start_all(nodes, timeout)
    except BaseException:
        cluster.close()
        raise
    record_startup("etcd" if n == 1 else f"etcd x{n}", cluster.ready_seconds)
    return cluster
