"""Scoring shards on a Slurm cluster: one job array per batch, each task running `score_and_record` as one
process; the caller waits for the array, streams its log lines and cancels it when interrupted.

A thin layer over `sbatch`, `squeue` and `scancel` (why not submitit or dagster-slurm: docs/deploy.md). A
batch is a folder below the shared folder (`slurm.shared_dir`), seen at the same path by every node and by
the submitting process:

    <shared>/<name>/batch.pkl            the model and, per array task, its shards (`ShardTask`) or one call
                    score.sbatch         the rendered job script (`sbatch score.sbatch` submits it again)
                    logs/<task>.log      each task's output, appended across requeues
                    results/<task>.json  written by a task once done: a record (or an error) per item

What a task does (load the model once, score its shards, stop after a chunk on a signal, requeue) is
`cluster.slurm_task`. The state of a task comes from `squeue` (no accounting database needed: `sacct` is not
used); its result from its results file, so a task that ends without one (failed, cancelled, a node lost
without `--requeue`) is an error naming its state and the end of its log.

    batch = write_batch(shared, "document_scores-1a2b", Batch(model, [[task_a, task_b], [task_c]]))
    results = run_batch(cfg, batch, log=print)  # submit, wait, stream; scancel on interrupt
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from attention_influence.io.atomic import replacing

TEMPLATE = Path(__file__).with_name("score.sbatch")
# squeue states after which a task runs no more; REQUEUED, PENDING, RUNNING, COMPLETING... are not final
FINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}
RESULT_GRACE_SECONDS = 15.0  # a task gone or final with no results file yet: its write may still show up
LOG_TAIL_LINES = 20

Log = Callable[[str], None]


class SlurmError(RuntimeError):
    """sbatch refused the job, or a task ended without its result."""


@dataclass(frozen=True)
class Call:
    """`fn(lm, *args, **kwargs)` in an array task with the batch's model loaded; `fn` must be importable on
    the nodes (it is pickled by reference) and return JSON-serializable values."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """What a job array runs: the model (`cluster.scoring.ModelSpec`) and, per array task, its items
    (`cluster.scoring.ShardTask`s, or one `Call`)."""

    model: object
    tasks: list[list]
    signal: str = "USR1"  # slurm.signal: the task finishes its chunk, exits and requeues itself


def write_batch(shared_dir: str | Path, name: str, batch: Batch) -> Path:
    """The batch's folder below `shared_dir` with its pickled tasks and empty logs/ and results/ folders.
    The folder is the submitting user's only (0700): the job unpickles what is in it."""
    folder = Path(shared_dir) / name
    for sub in ("logs", "results"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    with replacing(folder / "batch.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(batch))
    return folder


def load_batch(folder: Path) -> Batch:
    return pickle.loads((Path(folder) / "batch.pkl").read_bytes())


def sbatch_options(cfg, folder: Path, n_tasks: int, job_name: str) -> list[str]:
    """The job's sbatch options from the `slurm` section (`config.SlurmConfig`): one array task per item
    list, logs appended across requeues, the stop signal before the time limit, then the user's options."""
    array = f"0-{n_tasks - 1}" + (f"%{cfg.max_parallel}" if cfg.max_parallel else "")
    options = [
        f"--job-name={job_name}",
        f"--array={array}",
        f"--output={folder / 'logs' / '%a.log'}",
        "--open-mode=append",
        f"--signal=B:{cfg.signal}@{cfg.signal_seconds}",
        "--requeue" if cfg.requeue else "--no-requeue",
    ]
    named = {
        "partition": cfg.partition,
        "account": cfg.account,
        "gres": cfg.gres,
        "cpus-per-task": cfg.cpus_per_task,
        "mem": cfg.mem,
        "time": cfg.time_limit,
    }
    options += [f"--{k}={v}" for k, v in named.items() if v is not None]
    return options + list(cfg.sbatch_options)


def render_script(cfg, folder: Path, n_tasks: int, job_name: str, python: str | None = None) -> Path:
    """`score.sbatch` of the batch from the template (`slurm.script_template`, else the shipped one,
    deploy/slurm/score.sbatch): the options as #SBATCH lines, the setup lines, the Python to run."""
    template = Template(Path(cfg.script_template or TEMPLATE).read_text())
    text = template.substitute(
        options="\n".join(f"#SBATCH {o}" for o in sbatch_options(cfg, folder, n_tasks, job_name)),
        setup="\n".join(cfg.setup),
        python=shlex.quote(python or cfg.python or sys.executable),
        batch_dir=shlex.quote(str(folder)),
    )
    script = folder / "score.sbatch"
    with replacing(script) as tmp:
        tmp.write_text(text)
    return script


def _slurm(*argv: str, timeout: float = 60.0) -> str:
    """A Slurm client command's stdout; an error names the command and what it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def submit(script: Path) -> str:
    """`sbatch --parsable` the script; its job id."""
    out = _slurm("sbatch", "--parsable", str(script)).strip()
    return out.split(";")[0]  # "<id>" or "<id>;<cluster>"


def cancel(job_id: str) -> None:
    """scancel the whole array (tasks already done are not touched)."""
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


@dataclass(frozen=True)
class TaskState:
    state: str
    node: str
    reason: str


def task_states(job_id: str) -> dict[int, TaskState]:
    """Each array task squeue still knows (pending, running, or finished within MinJobAge): its state,
    node and reason."""
    out = _slurm(
        "squeue", "--noheader", "--array", "--states=all", f"--jobs={job_id}", "--format=%i|%T|%N|%r"
    )
    states = {}
    for line in out.splitlines():
        job, state, node, reason = (line.split("|") + ["", "", ""])[:4]
        task = job.rpartition("_")[2]
        if task.isdigit():
            states[int(task)] = TaskState(state.strip(), node.strip(), reason.strip())
    return states


class LogTails:
    """New complete lines of the tasks' log files since the last read."""

    def __init__(self, folder: Path, prefix: str):
        self.folder, self.prefix, self.offsets = folder, prefix, {}

    def lines(self) -> list[str]:
        out = []
        for path in sorted(self.folder.glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            if end:
                self.offsets[path] = offset + end
                text = data[:end].decode("utf-8", errors="replace")
                out += [f"[{self.prefix}_{path.stem}] {line}" for line in text.splitlines() if line.strip()]
        return out


def log_tail(folder: Path, task: int, n: int = LOG_TAIL_LINES) -> str:
    path = folder / "logs" / f"{task}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def read_result(folder: Path, task: int) -> dict | None:
    path = folder / "results" / f"{task}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait(job_id: str, folder: Path, n_tasks: int, poll_seconds: float, log: Log) -> list[dict]:
    """Every task's result (its results file), in task order, streaming the log lines and the tasks'
    state changes to `log`; a task that ended without a result gets {"task", "error"}."""
    done: dict[int, dict] = {}
    tails, last, ended = LogTails(folder / "logs", job_id), {}, {}
    while len(done) < n_tasks:
        try:
            states = task_states(job_id)
        except (SlurmError, subprocess.TimeoutExpired) as exc:  # slurmctld busy or restarting: ask again
            log(f"squeue: {exc}")
            states = None
        for line in tails.lines():
            log(line)
        now = time.monotonic()
        for task in range(n_tasks):
            if task in done:
                continue
            result = read_result(folder, task)
            if result is not None:
                done[task] = result
                continue
            if states is None:
                continue
            state = states.get(task)
            if state is not None and state != last.get(task):
                log(f"[{job_id}_{task}] {state.state} {state.node} {state.reason}".rstrip())
                last[task] = state
            if state is None or state.state in FINAL_STATES:
                since = ended.setdefault(task, now)
                if now - since >= RESULT_GRACE_SECONDS:
                    what = state.state if state else "and left the queue"
                    done[task] = {
                        "task": task,
                        "error": f"Slurm job {job_id}_{task} ended {what} without a result; "
                        f"its log ({folder / 'logs' / f'{task}.log'}) ends:\n{log_tail(folder, task)}",
                    }
            else:
                ended.pop(task, None)
        if len(done) < n_tasks:
            time.sleep(poll_seconds)
    for line in tails.lines():
        log(line)
    return [done[t] for t in range(n_tasks)]


def run_batch(
    cfg, folder: Path, job_name: str, log: Log = print, python: str | None = None
) -> tuple[str, list]:
    """Submit the batch in `folder` as one job array, wait for every task and return (job id, results in
    task order). Interrupted (the Dagster run cancelled: KeyboardInterrupt or Dagster's interrupt error),
    the job is cancelled before the exception goes on."""
    n_tasks = len(load_batch(folder).tasks)
    script = render_script(cfg, folder, n_tasks, job_name, python)
    job_id = submit(script)
    log(f"submitted Slurm job {job_id}: {n_tasks} array task(s), script {script}, logs {folder / 'logs'}")
    try:
        return job_id, wait(job_id, folder, n_tasks, cfg.poll_seconds, log)
    except BaseException:
        cancel(job_id)
        log(f"cancelled Slurm job {job_id}")
        raise


def signal_number(name: str) -> int:
    """`USR1`, `SIGUSR1` or `10` as a signal number; an unknown name is an error naming it."""
    name = name.strip().upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise ValueError(f"slurm.signal = {name!r} is not a signal name") from None
