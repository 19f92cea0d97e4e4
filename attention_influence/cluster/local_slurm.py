"""A real Slurm cluster on this machine, for tests and benchmarks: its own `munged`, `slurmctld` and one
`slurmd` per node (`slurmd -N <node>`, each node its own port), from Debian's packages, every path below
one temp folder and every address 127.0.0.1.

Several slurmd on one host work with Debian's build (22.05: `NodeName=... Port=...` per node, `slurmd -N`),
so no network namespace is needed. The daemons bind the wildcard address (Slurm has no listen-address
setting); they only talk to 127.0.0.1 and accept only messages signed with this cluster's own munge key,
generated here, readable by its owner only and never copied elsewhere. A unique cluster name (`ai<hex>`) and
free ports keep it apart from other clusters on the machine; the processes it started are stopped by pid
(`stop`), also the slurmstepd and job processes of its own nodes (`job_processes`).

Two partitions: `low` (default; its jobs are preempted by requeue after its `GraceTime`, `grace_seconds`:
0 sends the batch shell SIGTERM at once and SIGKILL `KillWait` = 5 s later; docs/deploy.md) and `high`
(PriorityTier 10: a job there preempts `low` jobs). Each node has one fake GPU gres (`gpu:1`, File=/dev/null)
so `--gres=gpu:1` is scheduled as on a GPU cluster (CUDA_VISIBLE_DEVICES is set; torch still finds no GPU and
scores on the CPU).
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from attention_influence.cluster.local import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")


def program(name: str) -> str | None:
    """A Slurm or munge program's path (the daemons are in /usr/sbin, often not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks (`apt-get install slurm-wlm munge` installs them)."""
    return [p for p in (*DAEMONS, "sbatch", "squeue", "scontrol", "scancel") if not program(p)]


SLURM_CONF = """\
ClusterName={name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={ctld_port_next}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=5
KillWait=5
MinJobAge=600
MpiDefault=none
MailProg=/bin/true
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
{nodes}
PartitionName=low Nodes=ALL Default=YES State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={grace}
PartitionName=high Nodes=ALL State=UP PriorityTier=10 PreemptMode=OFF
"""
NODE_LINE = "NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs={cpus} Gres=gpu:1"
GRES_CONF = "Name=gpu File=/dev/null\n"


@dataclass
class Daemon:
    name: str  # munged, slurmctld, or the node's name
    proc: subprocess.Popen
    log: Path


@dataclass
class LocalSlurmCluster:
    """`start()` munged, slurmctld and `nodes` slurmd; `stop()` ends everything it started, by pid."""

    root: Path  # every file of the cluster lives below it
    nodes: int = 2
    cpus: int = 1  # per node: one job at a time each with 1 CPU per task
    grace_seconds: int = 0  # the low partition's GraceTime: 0, SIGTERM at preemption (see above)
    name: str = field(default_factory=lambda: "ai" + secrets.token_hex(4))
    daemons: dict[str, Daemon] = field(default_factory=dict)
    node_ports: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    def env(self) -> dict:
        """What a Slurm client (sbatch, squeue, a Dagster run) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        log = self.root / "log" / f"{name}.out"
        env = {**os.environ, **self.env()}
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.daemons[name] = Daemon(name, proc, log)
        return self.daemons[name]

    def _write_files(self) -> None:
        for sub in ("etc", "state", "run", "log", "munge", *(f"spool/{n}" for n in self.node_names)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        ctld_port = free_port()
        self.node_ports = {n: free_port() for n in self.node_names}
        nodes = "\n".join(
            NODE_LINE.format(name=n, port=p, cpus=self.cpus) for n, p in self.node_ports.items()
        )
        self.conf.write_text(
            SLURM_CONF.format(
                name=self.name,
                ctld_port=ctld_port,
                ctld_port_next=free_port(),
                user=getpass.getuser(),
                munge_socket=self.munge_socket,
                root=self.root,
                nodes=nodes,
                grace=self.grace_seconds,
            )
        )
        (self.conf.parent / "gres.conf").write_text(GRES_CONF)

    def start(self, timeout: float = 60.0) -> LocalSlurmCluster:
        self._write_files()
        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                program("munged"),
                "--foreground",
                "--force",
                f"--key-file={munge / 'munge.key'}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._until(lambda: self.munge_socket.exists(), timeout, "munged to create its socket")
        self._spawn("slurmctld", [program("slurmctld"), "-D", "-f", str(self.conf)])
        self._until(lambda: "UP" in self._client("scontrol", "ping"), timeout, "slurmctld to answer")
        for node in self.node_names:
            self.start_node(node)
        self._until(lambda: self.idle_nodes() == set(self.node_names), timeout, "every node to be idle")
        return self

    def start_node(self, node: str) -> Daemon:
        """(Re)start a node's slurmd; ReturnToService=2 brings a node that was down back when it registers."""
        return self._spawn(node, [program("slurmd"), "-D", "-f", str(self.conf), "-N", node])

    def idle_nodes(self) -> set[str]:
        out = self._client("sinfo", "--noheader", "--Node", "--format=%N|%T")
        return {n for n, _, s in (line.partition("|") for line in out.splitlines()) if s.strip() == "idle"}

    def _client(self, *argv: str) -> str:
        proc = subprocess.run(
            argv, env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=30
        )
        return proc.stdout

    def _until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for daemon in self.daemons.values():
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"{daemon.name} exited:\n{daemon.log.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"waited {timeout:g}s for {what} ({self.root / 'log'})")

    def job_processes(self, node: str | None = None) -> list[int]:
        """The live slurmstepd processes of this cluster's nodes (of `node` only, if given) and the jobs under
        them. slurmstepd clears its environment, so it is known by the node's log file it keeps open; a job
        process by its SLURM_CLUSTER_NAME and SLURMD_NODENAME (also once orphaned)."""
        import psutil

        logs = {str(self.root / "log" / f"slurmd-{n}.log") for n in ([node] if node else self.node_names)}
        found = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if (proc.info["name"] or "").startswith("slurmstepd"):
                    if logs & {f.path for f in proc.open_files()}:
                        found.append(proc)
                    continue
                env = proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if env.get("SLURM_CLUSTER_NAME") == self.name and node in (None, env.get("SLURMD_NODENAME")):
                found.append(proc)
        pids = set()
        for proc in found:
            try:
                pids |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
            except psutil.NoSuchProcess:
                continue
        return sorted(pids)

    def kill_node(self, node: str) -> list[int]:
        """SIGKILL a node: its slurmd, its slurmstepd and the job processes under them, all at once (what a
        lost machine looks like to the controller: no answer, jobs gone)."""
        pids = [self.daemons[node].proc.pid, *self.job_processes(node)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.daemons[node].proc.wait(timeout=30)
        return pids

    def pids(self) -> list[int]:
        """Every live process of the cluster: daemons (and their children), job processes."""
        import psutil

        pids = []
        for daemon in self.daemons.values():
            if daemon.proc.poll() is None:
                try:
                    root = psutil.Process(daemon.proc.pid)
                    pids += [root.pid] + [c.pid for c in root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
        return pids + self.job_processes()

    def stop(self, timeout: float = 20.0) -> None:
        """Kill the jobs' processes, then SIGTERM the daemons' process groups (munged last), SIGKILL what is
        left after `timeout`. Only the processes this object started (or their slurmstepd) are signalled."""
        for pid in self.job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        order = [d for d in self.daemons.values() if d.name != "munged"] + [
            d for d in self.daemons.values() if d.name == "munged"
        ]
        for daemon in order:
            if daemon.proc.poll() is None:
                try:
                    os.killpg(daemon.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for daemon in order:
            try:
                daemon.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group: slurmctld's slurmscriptd, a stuck daemon
                os.killpg(daemon.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            daemon.proc.wait(timeout=10)
