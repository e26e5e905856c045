"""ZooKeeper: standalone servers and n-node ensembles, run with ``java`` on Debian's jars."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.servers.process import (
    HOST,
    ServerGroup,
    ServerMissing,
    ServerProcess,
    free_port,
    make_temp_dir,
    record_startup,
    start_all,
    tcp_request,
    wait_until,
)

__all__ = ["ZooKeeperEnsemble", "ZooKeeperNode", "start_zookeeper", "zookeeper_classpath"]

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# Debian's zookeeper.jar names its dependencies in its manifest's Class-Path, so only the
# jar itself and an slf4j binding are needed.
_JAR_CANDIDATES = [
    "/usr/share/java/zookeeper.jar",
    "/usr/share/zookeeper/zookeeper.jar",
    "/usr/share/zookeeper/lib/zookeeper.jar",
]
_SLF4J_SIMPLE = "/usr/share/java/slf4j-simple.jar"
TICK_MS = 250
JVM_OPTS = [
    "-Xmx256m",
    "-Xms32m",
    "-Xss512k",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # C1 only: much faster start-up
    "-XX:-UsePerfData",
    "-Xshare:auto",
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.admin.enableServer=false",
    "-Dzookeeper.jmx.log4j.disable=true",
]
LIVE_MODES = ("standalone", "leader", "follower")


def zookeeper_classpath() -> str:
    """Classpath for QuorumPeerMain from Debian's packages (raises ServerMissing)."""
    if shutil.which("java") is None:
        raise ServerMissing("zookeeper", "java", "default-jre-headless")
    jar = next((j for j in _JAR_CANDIDATES if Path(j).is_file()), None)
    if jar is None:
        found = sorted(Path("/usr/share/java").glob("zookeeper-3*.jar"))
        if not found:
            raise ServerMissing("zookeeper", "zookeeper.jar", "zookeeper")
        jar = str(found[0])
    parts = [jar]
    if Path(_SLF4J_SIMPLE).is_file():
        parts.append(_SLF4J_SIMPLE)
    return ":".join(parts)


class ZooKeeperNode(ServerProcess):
    """One ZooKeeper server (``port`` is its client port); ``myid`` counts from 1."""

    kind = "zookeeper"
    stop_grace = 10.0

    def __init__(
        self,
        myid: int,
        tmp: Path,
        client_port: int,
        servers: list[tuple[int, int, int]],
        tick_ms: int = TICK_MS,
    ) -> None:
        self.myid = myid
        self.dir = tmp / f"zk{myid}"
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={tick_ms}",
            "initLimit=20",
            "syncLimit=4",
            f"minSessionTimeout={max(2 * tick_ms, 500)}",
            "maxSessionTimeout=60000",
            f"dataDir={self.data_dir}",
            f"clientPort={client_port}",
            f"clientPortAddress={HOST}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "forceSync=no",
            "preAllocSize=1024",
            "snapCount=10000",
            "maxClientCnxns=0",
            "autopurge.purgeInterval=0",
        ]
        if len(servers) > 1:
            (self.data_dir / "myid").write_text(f"{myid}\n")
            lines += [f"server.{sid}={HOST}:{peer}:{elect}" for sid, peer, elect in servers]
            lines += ["standaloneEnabled=false", "reconfigEnabled=false"]
        cfg = self.dir / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        log = self.dir / "zookeeper.log"
        argv = [
            "java",
            *JVM_OPTS,
            f"-Dorg.slf4j.simpleLogger.logFile={log}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-cp",
            zookeeper_classpath(),
            MAIN_CLASS,
            str(cfg),
        ]
        # stdout/stderr (JVM messages) go to a second file; the server log is `zookeeper.log`.
        super().__init__(
            argv, port=client_port, log_path=self.dir / "stdout.log", cwd=self.dir, name=f"zk{myid}"
        )
        self.server_log = log

    def srvr(self, timeout: float = 0.5) -> str:
        return tcp_request(self.port, b"srvr", timeout=timeout).decode(errors="replace")

    def mode(self) -> str | None:
        """``standalone``/``leader``/``follower`` from the ``srvr`` 4-letter word, else None."""
        try:
            reply = self.srvr()
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def probe(self) -> bool:
        return self.mode() in LIVE_MODES

    def log_tail(self, lines: int = 30, max_chars: int = 6000) -> str:
        out = super().log_tail(lines, max_chars)
        try:
            text = self.server_log.read_text(errors="replace")
        except OSError:
            return out
        tail = "\n".join(text.splitlines()[-lines:])[-max_chars:]
        return f"{out}\n---- {self.server_log}:\n{tail}"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"


class ZooKeeperEnsemble(ServerGroup):
    """``n`` ZooKeeper servers (standalone when n == 1)."""

    parallel_stop = True

    def __init__(self, nodes: list[ZooKeeperNode], tmp: Path, owns_tmp: bool) -> None:
        super().__init__(nodes, tmp, owns_tmp)
        self.nodes = nodes

    @property
    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes]

    @property
    def hosts(self) -> str:
        """A kazoo ``hosts`` string: ``127.0.0.1:p1,127.0.0.1:p2,...``"""
        return ",".join(self.endpoints)

    @property
    def url(self) -> str:
        """``zookeeper://127.0.0.1:p1,127.0.0.1:p2,...``"""
        return "zookeeper://" + self.hosts

    def leader(self) -> ZooKeeperNode | None:
        """The live node whose mode is ``leader`` (or ``standalone``), else None."""
        for node in self.nodes:
            if node.alive and not node.paused and node.mode() in ("leader", "standalone"):
                return node
        return None

    def wait_for_leader(self, timeout: float = 20.0) -> ZooKeeperNode:
        node = wait_until(self.leader, timeout, "zookeeper leader")
        assert isinstance(node, ZooKeeperNode)
        return node

    def wait_serving(self, timeout: float = 20.0) -> None:
        """Wait until every live node serves (mode leader/follower/standalone)."""
        wait_until(
            lambda: all(n.probe() for n in self.nodes if n.alive and not n.paused),
            timeout,
            "zookeeper nodes serving",
        )


def start_zookeeper(
    n: int = 1, tmp: Path | None = None, *, tick_ms: int = TICK_MS, timeout: float | None = None
) -> ZooKeeperEnsemble:
    """Start ``n`` ZooKeeper servers (spawned together) and wait until each serves."""
    owns = tmp is None
    tmp = make_temp_dir(f"zk{n}") if tmp is None else tmp
    client_ports = [free_port() for _ in range(n)]
    servers = [(i + 1, free_port(), free_port()) for i in range(n)]
    nodes = [ZooKeeperNode(i + 1, tmp, client_ports[i], servers, tick_ms) for i in range(n)]
    ensemble = ZooKeeperEnsemble(nodes, tmp, owns)
    try:
        ensemble.ready_seconds = start_all(nodes, timeout)
    except BaseException:
        ensemble.close()
        raise
    record_startup("zookeeper" if n == 1 else f"zookeeper x{n}", ensemble.ready_seconds)
    return ensemble
