"""The local Valkey Cluster fixture itself, seen through redis-py's cluster
client: it forms as asked, writes land on the master that owns the slot, a
live slot migration keeps every stream entry written while it runs, and a
killed master's acknowledged writes are read back from the replica that
replaces it.  ``valkey_cluster`` and ``dedicated_cluster`` come from
``servers.py`` through ``conftest.py``.  Never a mock."""

from __future__ import annotations

import uuid

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import MovedError

from cluster_servers import SLOT_COUNT, LocalCluster


def cluster_client(cluster: LocalCluster) -> RedisCluster:
    return RedisCluster.from_url(cluster.seed_url, decode_responses=True)


def test_cluster_forms_with_a_replica_per_master(valkey_cluster: LocalCluster) -> None:
    masters = [node for node in valkey_cluster.nodes if node.role == "master"]
    replicas = [node for node in valkey_cluster.nodes if node.role == "replica"]
    assert len(masters) == 3
    assert len(replicas) == 3
    assert sorted(str(replica.master_id) for replica in replicas) == sorted(master.node_id for master in masters)
    owned = sorted(slot for master in masters for first, last in master.slots for slot in range(first, last + 1))
    assert owned == list(range(SLOT_COUNT))


def test_writes_land_on_the_master_that_owns_the_slot(valkey_cluster: LocalCluster) -> None:
    prefix = uuid.uuid4().hex
    keys = [f"{prefix}:{index}" for index in range(30)]
    with cluster_client(valkey_cluster) as client:
        for key in keys:
            client.set(key, key)
    owners = {key: valkey_cluster.master_for_slot(valkey_cluster.key_slot(key)).port for key in keys}
    assert len(set(owners.values())) == 3
    for key, port in owners.items():
        # A plain client follows no redirection: the key must be on this very node.
        assert valkey_cluster.client(port).get(key) == key
    stranger = next(n for n in valkey_cluster.nodes if n.role == "master" and n.port != owners[keys[0]])
    with pytest.raises(MovedError):
        valkey_cluster.client(stranger.port).get(keys[0])


def test_migrate_slot_keeps_stream_entries_written_during_it(dedicated_cluster: LocalCluster) -> None:
    stream = "{migrating}:events"
    neighbours = [f"{{migrating}}:neighbour:{index}" for index in range(4)]
    slot = dedicated_cluster.key_slot(stream)
    source = dedicated_cluster.master_for_slot(slot)
    target = next(n for n in dedicated_cluster.nodes if n.role == "master" and n.port != source.port)
    source_client = dedicated_cluster.client(source.port)
    entries_before = 3
    written = entries_before
    new_keys: list[str] = []
    stream_had_moved: list[bool] = []

    with cluster_client(dedicated_cluster) as client:
        for n in range(entries_before):
            client.xadd(stream, {"n": n})
        for key in neighbours:
            client.set(key, "x")

        def use_half_migrated_slot() -> None:
            nonlocal written
            keys_left = source_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            stream_had_moved.append(stream not in keys_left)
            client.xadd(stream, {"n": written})  # ASK to the target once the stream has moved
            written += 1
            new_keys.append(f"{{migrating}}:new:{written}")
            client.set(new_keys[-1], "x")  # a key the source lacks: always ASK to the target
            assert client.xlen(stream) == written

        dedicated_cluster.migrate_slot(slot, target.port, between_keys=use_half_migrated_slot)

        assert dedicated_cluster.master_for_slot(slot).port == target.port
        assert [int(fields["n"]) for _id, fields in client.xrange(stream)] == list(range(written))
    assert any(stream_had_moved), "no XADD ran while the stream sat on the target of a half-migrated slot"
    assert source_client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    target_keys = dedicated_cluster.client(target.port).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    assert target_keys == 1 + len(neighbours) + len(new_keys)


def test_failover_keeps_writes_a_replica_acknowledged(dedicated_cluster: LocalCluster) -> None:
    keys = [f"{{failover}}:{index}" for index in range(20)]
    victim = dedicated_cluster.master_for_slot(dedicated_cluster.key_slot(keys[0]))
    victim_replicas = {n.port for n in dedicated_cluster.nodes if n.master_id == victim.node_id}
    victim_client = dedicated_cluster.client(victim.port)
    for key in keys:
        victim_client.set(key, key)
    # A bounded WAIT: "1" means the replica has them; 0 (forever) could hang the suite.
    assert victim_client.execute_command("WAIT", 1, 5000) == 1

    dedicated_cluster.kill_master(victim.port)
    promoted = dedicated_cluster.wait_failover(victim.port, timeout=20)

    assert promoted.port in victim_replicas
    assert all(dedicated_cluster.client(promoted.port).get(key) == key for key in keys)
    with cluster_client(dedicated_cluster) as client:
        assert [client.get(key) for key in keys] == keys
    print(f"failover took {dedicated_cluster.last_failover_seconds:.2f} s")
