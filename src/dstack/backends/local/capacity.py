"""What this machine's running jobs hold: their GPUs (always exclusive) and the CPUs and memory they
asked for explicitly. The local backend offers the rest, so a job that needs more waits (with
`retry` on no-capacity) instead of sharing a GPU, and `priority` decides who gets it next.

A job's hold is `.holds/JOB_ID.json` beside the jobs' working directories, with its agent's pid: it
counts while that agent lives, and after the agent ended (the `exited` marker in its working
directory) until the server has seen the job end and terminated its instance (which removes both),
for at most EXITED_GRACE: else the scheduler, still trying the higher priorities that were refused
while it ran, would see the capacity free before the job's end woke them and hand it to a lower one.
A job that holds nothing has no such file, and the holds are listed from their own directory: the
offers of a machine with hundreds of jobs cost no more to list (each plan and launch lists them).
Between choosing a job's GPUs and its agent starting, the choice is kept in memory, so two jobs
launched at once never get the same GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RESERVATION_TTL = 120.0  # a choice whose launch never happened stops counting after this
EXITED_GRACE = 60.0  # an ended agent's hold counts this long at most if its job is never terminated
EXITED_MARKER = "exited"  # written by the agent as it ends (dstack/agent/main.py)
HOLDS_DIR = ".holds"  # in the jobs' directory: JOB_ID.json for each job that holds something
LEGACY_HOLD = "held.json"  # where a hold was kept before (in the job's own directory): adopted once
_LOCK = threading.Lock()
_RESERVED: dict[str, dict[str, tuple[float, Hold]]] = {}  # workdirs -> job id -> (when, hold)
_ADOPTED: set[str] = set()  # the jobs' directories whose legacy holds this process has moved


@dataclass
class Hold:
    cpus: int = 0
    memory_gb: float = 0.0
    gpus: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"cpus": self.cpus, "memory_gb": self.memory_gb, "gpus": self.gpus}


def _alive(pid: int, create_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and (create_time is None or abs(proc.create_time() - create_time) < 1)
    except psutil.Error:
        return False


def _recently_exited(workdir: Path) -> bool:
    try:
        return time.time() - (workdir / EXITED_MARKER).stat().st_mtime < EXITED_GRACE
    except OSError:
        return False  # still running, or killed before it could write the marker


def _adopt_legacy(workdirs: Path) -> None:
    """Holds an earlier version kept in the jobs' own directories (jobs that were running when the
    server was upgraded), moved into HOLDS_DIR: looked for once per process. Call with the lock held."""
    if str(workdirs) in _ADOPTED:
        return
    _ADOPTED.add(str(workdirs))
    for path in workdirs.glob(f"*/{LEGACY_HOLD}"):
        with contextlib.suppress(OSError):
            (workdirs / HOLDS_DIR).mkdir(exist_ok=True)
            os.replace(path, workdirs / HOLDS_DIR / f"{path.parent.name}.json")


def _file_holds(workdirs: Path) -> list[Hold]:
    """Call with the lock held."""
    _adopt_legacy(workdirs)
    holds = []
    try:
        entries = list(os.scandir(workdirs / HOLDS_DIR))
    except OSError:  # no job has held anything yet
        return []
    for entry in entries:
        job_id = entry.name.removesuffix(".json")
        try:
            with open(entry.path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if _alive(int(data.get("pid", 0)), data.get("create_time")) or _recently_exited(workdirs / job_id):
            holds.append(Hold(cpus=int(data.get("cpus", 0)), memory_gb=float(data.get("memory_gb", 0)),
                              gpus=[int(g) for g in data.get("gpus", [])]))
        elif not (workdirs / job_id).exists():  # terminated (its directory removed) without `forget`
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    return holds


def _pending_holds(workdirs: Path) -> list[Hold]:
    """Call with the lock held."""
    pending = _RESERVED.get(str(workdirs), {})
    now = time.time()
    for job_id, (at, _) in list(pending.items()):
        if now - at > RESERVATION_TTL:
            del pending[job_id]
    return [hold for _, hold in pending.values()]


def held(workdirs: Path) -> Hold:
    """The sum of what live jobs under `workdirs` hold, and of recent choices not launched yet."""
    with _LOCK:
        holds = _file_holds(workdirs) + _pending_holds(workdirs)
    total = Hold()
    for hold in holds:
        total.cpus += hold.cpus
        total.memory_gb += hold.memory_gb
        total.gpus += hold.gpus
    return total


def reserve(workdirs: Path, job_id: str, *, cpus: int, memory_gb: float, gpu_count: int, machine_gpus: int,
            machine_cpus: int, machine_memory_gb: float) -> Hold | None:
    """Choose the job's GPUs (the lowest free indices) and keep the choice until its agent runs; None
    when what it asks for is no longer free (another job took it since the offers were listed)."""
    with _LOCK:
        holds = _file_holds(workdirs) + _pending_holds(workdirs)
        taken = {g for hold in holds for g in hold.gpus}
        free = [i for i in range(machine_gpus) if i not in taken]
        if len(free) < gpu_count or (cpus and sum(h.cpus for h in holds) + cpus > machine_cpus) or \
                (memory_gb and sum(h.memory_gb for h in holds) + memory_gb > machine_memory_gb):
            return None
        hold = Hold(cpus=cpus, memory_gb=memory_gb, gpus=free[:gpu_count])
        _RESERVED.setdefault(str(workdirs), {})[job_id] = (time.time(), hold)
        return hold


def record(workdirs: Path, job_id: str, *, pid: int, create_time: float) -> None:
    """The agent runs: its hold moves from memory to HOLDS_DIR, under the lock, so that no listing
    sees it in neither place (or half written) and gives its GPUs to another job."""
    with _LOCK:
        at_hold = _RESERVED.get(str(workdirs), {}).get(job_id)
        hold = at_hold[1] if at_hold else Hold()
        if hold.cpus or hold.memory_gb or hold.gpus:  # most jobs hold nothing: no file to read or check
            (workdirs / HOLDS_DIR).mkdir(exist_ok=True)
            (workdirs / HOLDS_DIR / f"{job_id}.json").write_text(json.dumps({**hold.to_json(), "pid": pid,
                                                                             "create_time": create_time}))
        _RESERVED.get(str(workdirs), {}).pop(job_id, None)


def forget(workdirs: Path, job_id: str) -> None:
    """The job's instance is terminated: what it held is free."""
    with contextlib.suppress(OSError):
        os.unlink(workdirs / HOLDS_DIR / f"{job_id}.json")


def release(workdirs: Path, job_id: str) -> None:
    """A launch that failed: its choice no longer counts."""
    with _LOCK:
        _RESERVED.get(str(workdirs), {}).pop(job_id, None)
