"""A local cluster of real `ringleader` daemons on loopback, watched the way an
operator would: every node's `/partitions` and `/status` polled every 10 ms,
and every node's SSE stream (`/v1/events`) read as it happens.

All times come from this process's one monotonic clock (`time.monotonic()`).
Used by `bench/run`; standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

POLL_INTERVAL = 0.010


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Sample:
    """What one poll of one node saw."""

    __slots__ = ("at", "owned", "leader", "epoch", "members")

    def __init__(self, at, owned, leader, epoch, members):
        self.at = at
        self.owned = owned
        self.leader = leader
        self.epoch = epoch
        self.members = members


class Node:
    """One daemon process and the threads watching it."""

    def __init__(self, cluster: "Cluster", name: str, peer: int, http_port: int):
        self.cluster = cluster
        self.name = name
        self.peer = f"127.0.0.1:{peer}"
        self.http = f"127.0.0.1:{http_port}"
        self.proc: subprocess.Popen | None = None
        self.id: str | None = None
        self.latest: Sample | None = None
        self.events: list[tuple[float, dict]] = []
        self.polls = 0
        self.stop = threading.Event()
        # Cleared to pause polling (the SSE stream stays open).
        self.polling = threading.Event()
        self.polling.set()

    # -- process ---------------------------------------------------------
    def start(self, seeds: str):
        args = [
            self.cluster.binary, "run",
            "--name", self.name,
            "--listen", self.peer,
            "--http", self.http,
            "--seeds", seeds,
            "--partitions", str(self.cluster.partitions),
            "--log", "error,openraft=off",
        ] + self.cluster.extra
        if self.cluster.data_root:
            args += ["--data-dir", os.path.join(self.cluster.data_root, self.name)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.id = None
        self.latest = None
        self.stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()
        threading.Thread(target=self._sse, daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
        if sig in (signal.SIGKILL,):
            self.wait_exit(5)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.stop.set()
        self.latest = None
        return code

    # -- watching --------------------------------------------------------
    def _get(self, conn, path):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"{path}: HTTP {resp.status}")
        return json.loads(body)

    def _poll(self):
        stop = self.stop
        conn = None
        next_at = time.monotonic()
        while not stop.is_set():
            if not self.polling.is_set():
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.http, timeout=1)
                parts = self._get(conn, "/partitions")
                status = self._get(conn, "/status")
                at = time.monotonic()
                if stop.is_set():
                    break
                self.id = status.get("node")
                self.latest = Sample(
                    at,
                    frozenset(g["partition"] for g in parts),
                    status.get("leader"),
                    int(status.get("epoch") or 0),
                    {m["id"]: m for m in status.get("members", [])},
                )
                self.polls += 1
                self.cluster.changed()
            except (OSError, ValueError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            next_at += POLL_INTERVAL
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()

    def _sse(self):
        stop = self.stop
        while not stop.is_set():
            try:
                conn = http.client.HTTPConnection(self.http, timeout=2)
                conn.request("GET", "/v1/events")
                resp = conn.getresponse()
                while not stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    if line.startswith(b"data:"):
                        at = time.monotonic()
                        try:
                            self.events.append((at, json.loads(line[5:])))
                        except ValueError:
                            pass
            except (OSError, http.client.HTTPException):
                pass
            if not stop.is_set():
                time.sleep(0.02)


class Cluster:
    """`n` daemons with one seed list; nodes restart on their old ports (and
    with their data directories under `data_root`, when given)."""

    def __init__(self, binary: str, n: int, partitions: int, extra: list[str],
                 data_root: str | None = None):
        self.binary = binary
        self.partitions = partitions
        self.extra = extra
        self.data_root = data_root
        # The voter target the nodes run with (`--voters`, default 5).
        self.voter_target = int(extra[extra.index("--voters") + 1]) if "--voters" in extra else 5
        ports = free_ports(2 * n)
        self.nodes = [
            Node(self, f"n{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(n)
        ]
        self.seeds = ",".join(node.peer for node in self.nodes)
        self.cond = threading.Condition()

    def changed(self):
        with self.cond:
            self.cond.notify_all()

    def start(self):
        for node in self.nodes:
            node.start(self.seeds)

    def stop(self):
        for node in self.nodes:
            node.kill(signal.SIGKILL)

    def pause_polling(self, paused: bool):
        for node in self.nodes:
            if paused:
                node.polling.clear()
            else:
                node.polling.set()

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    # -- conditions on the latest samples ----------------------------------
    def full_ownership(self, nodes: list[Node] | None = None):
        """The time of the newest sample if every partition is held by
        exactly one of `nodes` (default: the live ones) and every one of
        them answered; else None."""
        nodes = self.live() if nodes is None else nodes
        samples = [n.latest for n in nodes]
        if any(s is None for s in samples):
            return None
        seen = 0
        union = set()
        for s in samples:
            seen += len(s.owned)
            union |= s.owned
        if seen != self.partitions or len(union) != self.partitions:
            return None
        return max(s.at for s in samples)

    def balanced(self, nodes: list[Node] | None = None) -> bool:
        nodes = self.live() if nodes is None else nodes
        if self.full_ownership(nodes) is None:
            return False
        counts = [len(n.latest.owned) for n in nodes]
        return max(counts) - min(counts) <= 1

    def agreed_leader(self, nodes: list[Node] | None = None):
        """(leader id, epoch) if every node names the same live leader."""
        nodes = self.live() if nodes is None else nodes
        samples = [n.latest for n in nodes]
        if any(s is None for s in samples):
            return None
        leaders = {(s.leader, s.epoch) for s in samples}
        if len(leaders) != 1:
            return None
        leader, epoch = leaders.pop()
        if leader is None or leader not in {n.id for n in nodes}:
            return None
        return leader, epoch

    def members_are(self, nodes: list[Node]) -> bool:
        ids = {n.id for n in nodes}
        return all(
            n.latest is not None and set(n.latest.members) == ids for n in nodes
        )

    def wait(self, predicate, timeout: float):
        """Waits until `predicate()` returns something truthy; returns it, or
        None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.05))

    def voters_complete(self, target: int | None = None) -> bool:
        """The leader's member table has as many Raft voters as the cluster
        aims for (the largest odd number up to `target` and the live
        count): joiners are promoted, so a leader kill is survivable."""
        leader = self.leader()
        if leader is None or leader.latest is None:
            return False
        want = min(target or self.voter_target, len(self.live()))
        want -= 1 - want % 2
        roles = [m.get("role") for m in leader.latest.members.values()]
        return roles.count("voter") == want

    def settled(self, timeout: float = 30.0) -> bool:
        """Every live node is a member, agrees on one leader, the
        partitions are balanced over them and the voter set is complete."""
        return bool(
            self.wait(
                lambda: self.members_are(self.live())
                and self.agreed_leader()
                and self.balanced()
                and self.voters_complete(),
                timeout,
            )
        )

    def by_id(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def leader(self) -> Node | None:
        agreed = self.agreed_leader()
        return self.by_id(agreed[0]) if agreed else None


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (/proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_stat(pid: int) -> tuple[int, int, float]:
    """(VmRSS KiB, VmHWM KiB, CPU seconds) of a process."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm, cpu_seconds(pid)


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used, in seconds.

    From the scheduler's exact run time of each live thread
    (/proc/PID/task/*/schedstat, nanoseconds). utime + stime in
    /proc/PID/stat carry the same total but in 10 ms units, which at an idle
    node's 0.1-1 % over 30 s is a step of 0.03 % in the result; they are
    the fallback on kernels without schedstat.
    """
    try:
        total_ns = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total_ns += int(f.read().split()[0])
            except FileNotFoundError:
                pass  # the thread ended meanwhile
        return total_ns / 1e9
    except (FileNotFoundError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
