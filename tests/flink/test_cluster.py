"""The standalone session cluster itself: comes up healthy on loopback with one TaskManager of 2
slots and the configured restart strategy; a crashed TaskManager is detected and a restarted one
registers again; stop.sh leaves nothing running (checked by the fixture)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Set

import pytest

from tests.flink.conftest import FLINK_MINOR

pytestmark = [pytest.mark.slow, pytest.mark.flink]


def _listening_sockets_by_pid(pids: Set[int]) -> Dict[int, Set[str]]:
    """pid -> {"ip:port"} of its listening TCP sockets, read from /proc (no extra tools)."""
    inode_to_addr = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if len(raw) == 4:
                ip = ".".join(str(b) for b in raw[::-1])
            else:  # IPv6, 4 little-endian words; IPv4-mapped ::ffff:a.b.c.d shows its v4 part
                words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                flat = b"".join(words)
                ip = (".".join(str(b) for b in flat[12:])
                      if flat[:12] == b"\0" * 10 + b"\xff\xff" else flat.hex())
            inode_to_addr[fields[9]] = f"{ip}:{int(hex_port, 16)}"
    result: Dict[int, Set[str]] = {}
    for pid in pids:
        addrs = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[len("socket:["):-1]
                if inode in inode_to_addr:
                    addrs.add(inode_to_addr[inode])
        result[pid] = addrs
    return result


def test_cluster_is_healthy_with_two_slots_on_loopback_only(flink_cluster):
    overview = flink_cluster.get("/overview")
    assert overview["flink-version"].startswith(FLINK_MINOR + ".")
    assert overview["taskmanagers"] == 1
    assert overview["slots-total"] == 2

    taskmanagers = flink_cluster.get("/taskmanagers")["taskmanagers"]
    assert [tm["slotsNumber"] for tm in taskmanagers] == [2]

    config = {entry["key"]: entry["value"] for entry in flink_cluster.get("/jobmanager/config")}
    assert config["restart-strategy.type"] == "fixed-delay"
    assert int(config["restart-strategy.fixed-delay.attempts"]) >= 3
    assert config["rest.bind-address"] == "127.0.0.1"

    pids = {flink_cluster.pid(c) for c in ("jobmanager", "taskmanager", "workerpool")}
    assert None not in pids, flink_cluster.tail_logs()
    sockets = _listening_sockets_by_pid(pids)
    listening = set().union(*sockets.values())
    assert f"127.0.0.1:{flink_cluster.rest_port}" in listening
    assert f"127.0.0.1:{flink_cluster.pool_port}" in listening
    assert all(addr.startswith("127.0.0.1:") for addr in listening), listening


def test_crashed_taskmanager_is_detected_and_a_restarted_one_registers(flink_cluster):
    first_id = flink_cluster.get("/taskmanagers")["taskmanagers"][0]["id"]
    flink_cluster.stop("taskmanager", kill=True)            # SIGKILL: a crash, not a shutdown
    assert flink_cluster.pid("taskmanager") is None
    flink_cluster.wait_for(lambda: flink_cluster.get("/overview")["taskmanagers"] == 0, 60,
                           "the JobManager to notice the lost TaskManager",
                           taskmanager_grace=None)
    flink_cluster.start("taskmanager")                      # waits for REST health
    taskmanagers = flink_cluster.get("/taskmanagers")["taskmanagers"]
    assert len(taskmanagers) == 1 and taskmanagers[0]["slotsNumber"] == 2
    assert taskmanagers[0]["id"] != first_id
