"""A real MariaDB Galera cluster on loopback ports, for the tests, and its one gate.

Owns booting N nodes (default 3) from Debian's packages (`mariadb-server`, `galera-4`,
`rsync`): each node is a `mariadbd` of its own with a data directory owned by `mysql`
(the rsync state transfer runs as that user), its own SQL, cluster, IST and SST ports
on 127.0.0.1; the first node starts a new cluster, the others join it by state
transfer. Teardown stops every node and removes the directories. It never knows what
cronloop does with the cluster.

The gate: without the packages the Galera tests skip, unless `CRONLOOP_REQUIRE_GALERA=1`
(CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

MARIADBD = Path("/usr/sbin/mariadbd")
INSTALL_DB = Path("/usr/bin/mariadb-install-db")
PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
REQUIRE_GALERA = os.environ.get("CRONLOOP_REQUIRE_GALERA") == "1"
BOOT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def missing() -> list[str]:
    """What this machine lacks to boot a cluster (empty: it can)."""
    need = [MARIADBD, INSTALL_DB, PROVIDER]
    lacks = [str(p) for p in need if not p.exists()]
    lacks += [tool for tool in ("rsync", "wsrep_sst_rsync") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        lacks.append("root (the nodes run as the mysql user)")
    return lacks


def need_galera() -> None:
    """Skip the calling test when a cluster cannot boot here, or fail it under CI."""
    lacks = missing()
    if not lacks:
        return
    import pytest

    why = "cannot boot a Galera cluster: missing " + ", ".join(lacks)
    if REQUIRE_GALERA:
        pytest.fail(f"CRONLOOP_REQUIRE_GALERA=1 but {why}")
    pytest.skip(why)


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    """One `mariadbd` of the cluster."""

    index: int
    home: Path
    sql_port: int
    gcomm_port: int
    ist_port: int
    sst_port: int
    proc: subprocess.Popen[bytes] | None = None
    faketime: str | None = None  # libfaketime's FAKETIME for this node, when shifted

    @property
    def datadir(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "my.cnf"

    @property
    def error_log(self) -> Path:
        return self.home / "error.log"

    def url(self, database: str | None = None, driver: str = "mysql+aiomysql") -> str:
        return f"{driver}://root@127.0.0.1:{self.sql_port}/{database or ''}"

    def write_config(self, peers: str, cluster_name: str) -> None:
        options = (
            f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm_port};"
            f"ist.recv_addr=127.0.0.1:{self.ist_port};"
            f"base_port={self.gcomm_port};gcache.size=32M"
        )
        self.config.write_text(
            "[mysqld]\n"
            f"datadir={self.datadir}\n"
            f"socket={self.home / 'mysqld.sock'}\n"
            f"pid-file={self.home / 'mysqld.pid'}\n"
            f"log-error={self.error_log}\n"
            f"port={self.sql_port}\n"
            "bind-address=127.0.0.1\n"
            "user=mysql\n"
            "max_connections=500\n"
            "performance_schema=OFF\n"
            "innodb_buffer_pool_size=32M\n"
            "innodb_log_file_size=16M\n"
            "innodb_flush_log_at_trx_commit=0\n"
            "binlog_format=ROW\n"
            "default_storage_engine=InnoDB\n"
            "innodb_autoinc_lock_mode=2\n"
            "wsrep_on=ON\n"
            f"wsrep_provider={PROVIDER}\n"
            f"wsrep_cluster_name={cluster_name}\n"
            f"wsrep_cluster_address=gcomm://{peers}\n"
            f"wsrep_node_name=node{self.index}\n"
            f"wsrep_node_address=127.0.0.1:{self.gcomm_port}\n"
            f"wsrep_node_incoming_address=127.0.0.1:{self.sql_port}\n"
            f'wsrep_provider_options="{options}"\n'
            "wsrep_sst_method=rsync\n"
            f"wsrep_sst_receive_address=127.0.0.1:{self.sst_port}\n"
            "wsrep_slave_threads=2\n",
            encoding="utf-8",
        )

    def start(self, *, new_cluster: bool = False) -> None:
        argv = [str(MARIADBD), f"--defaults-file={self.config}"]
        if new_cluster:
            argv.append("--wsrep-new-cluster")
        env = dict(os.environ)
        if self.faketime is not None:
            env["FAKETIME"] = self.faketime
            env["LD_PRELOAD"] = _libfaketime()
            # the wall clock only: Galera's timers (evs, suspect) run on the monotonic
            # clock, and UTC_TIMESTAMP() on the wall clock, which is what leases read
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        with (self.home / "stderr.log").open("ab") as stderr:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )

    def kill(self) -> None:
        """kill -9: the node dies as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def status(self, variable: str) -> str | None:
        """A `SHOW STATUS` value, None when the node does not answer."""
        try:
            rows = self.query(f"SHOW GLOBAL STATUS LIKE '{variable}'")
        except sa.exc.DBAPIError:
            return None
        return str(rows[0][1]) if rows else None

    def query(self, sql: str) -> list[tuple[object, ...]]:
        engine = sa.create_engine(
            self.url(driver="mysql+pymysql"),
            poolclass=NullPool,
            connect_args={"connect_timeout": 2, "read_timeout": 10},
        )
        try:
            with engine.begin() as conn:
                result = conn.exec_driver_sql(sql)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def wait_synced(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Until this node is a Synced member of the primary component."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node{self.index} exited: {self.tail()}")
            if self.status("wsrep_local_state_comment") == "Synced":
                return
            time.sleep(0.25)  # a server booting has nothing to wake us with
        raise RuntimeError(f"node{self.index} not synced after {timeout_s}s: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        if not self.error_log.exists():
            return "(no error log)"
        text = self.error_log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _libfaketime() -> str:
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ):
        if Path(candidate).exists():
            return candidate
    raise RuntimeError("libfaketime is not installed (apt-get install faketime)")


@dataclass
class Cluster:
    """The running nodes; `urls` reach each of them (one per worker)."""

    nodes: list[Node]
    root: Path
    name: str = "cronloop_test"
    _peers: str = field(default="", repr=False)

    def url(self, index: int, database: str | None = None) -> str:
        return self.nodes[index].url(database)

    def admin(self, sql: str, index: int = 0) -> None:
        self.nodes[index].query(sql)

    def size(self) -> int:
        return int(self.nodes[0].status("wsrep_cluster_size") or 0)

    def restart(self, index: int) -> None:
        """(Re)start a stopped or killed node; it rejoins by state transfer."""
        node = self.nodes[index]
        node.stop()
        node.start()
        node.wait_synced()

    @contextmanager
    def database(self, prefix: str = "cronloop_g") -> Iterator[str]:
        """A new empty database on the cluster (its name), dropped on the way out."""
        name = f"{prefix}_{os.getpid()}_{os.urandom(4).hex()}"
        self.admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield name
        finally:
            self.admin(f"DROP DATABASE IF EXISTS `{name}`")


def _prepare_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="galera-", dir="/tmp"))
    root.chmod(0o755)
    return root


def _make_nodes(root: Path, count: int) -> list[Node]:
    ports = _free_ports(4 * count)
    nodes = []
    for i in range(count):
        home = root / f"n{i}"
        home.mkdir()
        (home / "data").mkdir()
        shutil.chown(home, "mysql", "mysql")
        shutil.chown(home / "data", "mysql", "mysql")
        sql, gcomm, ist, sst = ports[4 * i : 4 * i + 4]
        nodes.append(Node(i, home, sql, gcomm, ist, sst))
    return nodes


def _install_db(node: Node) -> None:
    subprocess.run(
        [
            str(INSTALL_DB),
            f"--defaults-file={node.config}",
            "--user=mysql",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--wsrep-on=OFF",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=BOOT_TIMEOUT_S,
    )


@contextmanager
def galera_cluster(count: int = 3, faketime: dict[int, str] | None = None) -> Iterator[Cluster]:
    """Boot `count` nodes (node i's clock shifted by libfaketime when `faketime[i]` is
    given, e.g. "+30s"), yield the cluster, stop and remove it all."""
    root = _prepare_root()
    nodes = _make_nodes(root, count)
    peers = ",".join(f"127.0.0.1:{n.gcomm_port}" for n in nodes)
    cluster = Cluster(nodes, root, _peers=peers)
    try:
        for node in nodes:
            node.write_config(peers, cluster.name)
            node.faketime = (faketime or {}).get(node.index)
        _install_db(nodes[0])
        nodes[0].start(new_cluster=True)
        nodes[0].wait_synced()
        for node in nodes[1:]:  # joining together: one donor serves both transfers
            node.start()
        for node in nodes[1:]:
            node.wait_synced()
        yield cluster
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
