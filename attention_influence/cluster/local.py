"""A real multi-node Ray cluster on this machine: a head and N worker nodes, each its own `ray start --block`
process tree with its own resources, every port on loopback, token authentication on.

For tests and benchmarks (a node can be SIGKILLed on purpose). Ray 2.60 rewrites 127.0.0.1 into the machine's
routable address when a node joins a cluster (`services.resolve_ip_for_localhost`), which would put its ports
on every interface; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps loopback for every process of the cluster and
for the driver (`driver_env`); the worker-node launcher below skips the CLI's refusal to start a worker node
under that setting and its rewrite of 127.0.0.1 (its child processes inherit the setting). A real cluster
(KubeRay, deploy/ray/) needs none of this.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# `ray start` for a worker node with the loopback setting: the CLI's multi-node check reads the same flag
_WORKER_START = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True  # this process only: the CLI would refuse a worker node otherwise
services.resolve_ip_for_localhost = lambda host: host  # ... and would then rewrite 127.0.0.1
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""
RAY_CLI = "ray.scripts.scripts"
# node death noticed in ~3 s instead of ~30 s, so a killed node's task is retried quickly
HEALTH_CHECK = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


_TAKEN: set[int] = set()  # ports handed out by this process: never handed out twice


def free_port() -> int:
    """A loopback port nobody listens on, distinct from every port this process handed out before."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


def node_ports(workers: int = 8) -> tuple[int, list[str]]:
    """Free ports of one node's own services: nodes sharing a machine (and loopback) clash on Ray's fixed
    defaults otherwise."""
    ports = [free_port() for _ in range(6 + workers)]
    flags = ["node-manager", "object-manager", "metrics-export", "dashboard-agent-listen"]
    flags += ["dashboard-agent-grpc", "runtime-env-agent"]
    out = [f"--{flag}-port={port}" for flag, port in zip(flags, ports, strict=False)]
    return ports[0], [*out, "--worker-port-list=" + ",".join(map(str, ports[len(flags) :]))]


@dataclass
class Node:
    """One node: its `ray start --block` process (parent of its raylet and workers) and its log."""

    name: str
    proc: subprocess.Popen
    log: Path
    manager_port: int  # the raylet's port: how `ray.nodes()` tells the nodes of one machine apart
    node_id: str = ""  # Ray's node id, known once the cluster is up

    def pids(self) -> list[int]:
        """The node's processes: the launcher, its raylet, agents and worker processes."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> list[int]:
        """SIGKILL every process of the node (children first listed, all signalled at once)."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        return pids


@dataclass
class LocalRayCluster:
    """`start()` a head (no CPUs, so no task runs there) and worker nodes; `stop()` kills what it started."""

    root: Path  # temp dir of the cluster (sessions, logs, token); every process's command line names it
    workers: list[dict] = field(default_factory=lambda: [{"num_cpus": 1}, {"num_cpus": 1}])
    env: dict = field(default_factory=dict)  # extra environment of every node (PYTHONPATH, ...)
    port: int = 0
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token_file(self) -> Path:
        return self.root / "auth_token"

    def node_env(self) -> dict:
        return {**os.environ, **self.env, **self.driver_env()}

    def driver_env(self) -> dict:
        """What a driver process needs to connect: loopback addresses and the token."""
        return {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _spawn(self, name: str, args: list[str], worker: bool) -> Node:
        port, flags = node_ports()
        args = [*args, *flags]
        log = self.root / f"{name}.log"
        cmd = [sys.executable, "-c", _WORKER_START] if worker else [sys.executable, "-m", RAY_CLI]
        handle = open(log, "w")
        proc = subprocess.Popen(
            [*cmd, "start", "--block", "--disable-usage-stats", *args],
            env=self.node_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        node = Node(name, proc, log, port)
        self.nodes.append(node)
        return node

    def start(self, timeout: float = 180.0) -> LocalRayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.port = free_port()
        self._spawn(
            "head",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--ray-client-server-port={free_port()}",
                "--num-cpus=0",
                "--num-gpus=0",
                "--include-dashboard=false",
                f"--temp-dir={self.root / 'ray'}",
                f"--system-config={json.dumps(HEALTH_CHECK)}",
            ],
            worker=False,
        )
        self._wait_listening(self.port, timeout)
        for i, spec in enumerate(self.workers):
            args = [f"--address={self.address}", "--node-ip-address=127.0.0.1"]
            args += [f"--num-cpus={spec.get('num_cpus', 1)}", f"--num-gpus={spec.get('num_gpus', 0)}"]
            if spec.get("resources"):
                args.append(f"--resources={json.dumps(spec['resources'])}")
            self._spawn(f"worker{i + 1}", args, worker=True)
            self._wait_nodes(2 + i, timeout)  # one at a time: nodes starting together clash on socket names
        return self

    def _wait_listening(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"the Ray head did not listen on {port} within {timeout:g}s ({self.nodes[0].log})")

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"Ray node {node.name} exited:\n{node.log.read_text()[-3000:]}")

    def _wait_nodes(self, n: int, timeout: float) -> None:
        """Until n nodes are alive (asked in a child process: a driver of its own); sets their node ids."""
        deadline = time.monotonic() + timeout
        probe = (
            "import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps({n['NodeManagerPort']: n['NodeID'] for n in ray.nodes() if n['Alive']}))"
        )
        while time.monotonic() < deadline:
            self._check_alive()
            out = subprocess.run(
                [sys.executable, "-c", probe % self.address],
                env=self.node_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            alive = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
            if len(alive) == n:
                for node in self.nodes[:n]:
                    node.node_id = alive[str(node.manager_port)]
                return
            time.sleep(1.0)
        raise TimeoutError(f"{n} Ray nodes did not come up within {timeout:g}s")

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.node_id == node_id)

    def pids(self) -> list[int]:
        """Every process of the cluster: the node trees, and anything else naming its temp dir."""
        import psutil

        pids = {pid for node in self.nodes for pid in node.pids()}
        marker = str(self.root)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(marker in part for part in proc.info["cmdline"] or []):
                    pids.add(proc.info["pid"])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return sorted(pids)

    def stop(self) -> None:
        """SIGKILL every process the cluster started (no `ray stop`: it would stop other clusters too)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes:
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
