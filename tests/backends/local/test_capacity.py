"""What the local machine's jobs hold: a hold counts while its agent lives (and a while after, until
the job is terminated); a job that holds nothing leaves no file to read, and the holds are listed from
their own directory (hundreds of jobs must not slow down listing the offers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from dstack.backends.local import capacity


def _launch(workdirs: Path, job_id: str, pid: int, **asks: float) -> capacity.Hold | None:
    (workdirs / job_id).mkdir(parents=True)
    hold = capacity.reserve(workdirs, job_id, cpus=int(asks.get("cpus", 0)), memory_gb=asks.get("memory_gb", 0),
                            gpu_count=int(asks.get("gpus", 0)), machine_gpus=2, machine_cpus=8,
                            machine_memory_gb=32)
    capacity.record(workdirs, job_id, pid=pid, create_time=psutil.Process(pid).create_time())
    return hold


def test_holds_count_while_their_agent_lives_and_empty_ones_leave_no_file(tmp_path: Path) -> None:
    me = os.getpid()
    holds = tmp_path / capacity.HOLDS_DIR
    _launch(tmp_path, "nothing", me)
    assert not holds.exists()
    assert capacity.held(tmp_path) == capacity.Hold()

    gpu = _launch(tmp_path, "gpu", me, gpus=1, cpus=2)
    assert gpu == capacity.Hold(cpus=2, gpus=[0])
    assert [p.name for p in holds.iterdir()] == ["gpu.json"]
    assert capacity.held(tmp_path) == capacity.Hold(cpus=2, gpus=[0])

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / "ended").mkdir()
    (holds / "ended.json").write_text(json.dumps({"cpus": 4, "gpus": [1], "pid": ended.pid}))
    assert capacity.held(tmp_path) == capacity.Hold(cpus=2, gpus=[0])  # its agent is gone

    # An agent that ended just now (its marker): its hold counts until the job is terminated (the
    # directory removed), or for EXITED_GRACE at most.
    (tmp_path / "ended" / capacity.EXITED_MARKER).touch()
    held = capacity.held(tmp_path)
    assert (held.cpus, sorted(held.gpus)) == (6, [0, 1])
    stale = time.time() - capacity.EXITED_GRACE - 1
    os.utime(tmp_path / "ended" / capacity.EXITED_MARKER, (stale, stale))
    assert capacity.held(tmp_path) == capacity.Hold(cpus=2, gpus=[0])

    assert _launch(tmp_path, "second-gpu", me, gpus=1) == capacity.Hold(gpus=[1])
    assert capacity.reserve(tmp_path, "third", cpus=0, memory_gb=0, gpu_count=1, machine_gpus=2, machine_cpus=8,
                            machine_memory_gb=32) is None  # both GPUs held


def test_a_terminated_jobs_hold_is_gone_and_a_stale_one_is_cleared(tmp_path: Path) -> None:
    me = os.getpid()
    _launch(tmp_path, "done", me, gpus=1)
    capacity.forget(tmp_path, "done")  # its instance terminated
    assert capacity.held(tmp_path) == capacity.Hold()

    # A hold left behind (its agent gone, its directory removed without `forget`): cleared when listed.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / capacity.HOLDS_DIR / "gone.json"
    stale.write_text(json.dumps({"gpus": [0], "pid": gone.pid}))
    assert capacity.held(tmp_path) == capacity.Hold()
    assert not stale.exists()


def test_holds_an_earlier_version_kept_in_the_jobs_directories_are_adopted(tmp_path: Path) -> None:
    """A server upgraded while GPU jobs run: their holds (`held.json` in each job's directory) count."""
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / capacity.LEGACY_HOLD).write_text(json.dumps({
        "cpus": 1, "gpus": [1], "pid": os.getpid(), "create_time": psutil.Process().create_time()}))
    assert capacity.held(tmp_path) == capacity.Hold(cpus=1, gpus=[1])
    assert not (tmp_path / "running" / capacity.LEGACY_HOLD).exists()
    assert capacity.reserve(tmp_path, "next", cpus=0, memory_gb=0, gpu_count=1, machine_gpus=2, machine_cpus=8,
                            machine_memory_gb=32) == capacity.Hold(gpus=[0])


def test_a_hold_counts_while_it_moves_from_memory_to_its_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing while the agent's hold is recorded sees it (else two jobs could get one GPU)."""
    (tmp_path / "job").mkdir()
    assert capacity.reserve(tmp_path, "job", cpus=0, memory_gb=0, gpu_count=1, machine_gpus=2, machine_cpus=8,
                            machine_memory_gb=32) == capacity.Hold(gpus=[0])
    seen: list[list[int]] = []
    listers: list[threading.Thread] = []
    write_text = Path.write_text

    def writing(self: Path, *args: object, **kwargs: object) -> int:
        lister = threading.Thread(target=lambda: seen.append(capacity.held(tmp_path).gpus))
        listers.append(lister)
        lister.start()
        lister.join(0.2)  # a listing in the middle of the write: it waits for the record, if it must
        return write_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", writing)
    capacity.record(tmp_path, "job", pid=os.getpid(), create_time=psutil.Process().create_time())
    for lister in listers:
        lister.join()
    assert seen == [[0]]
