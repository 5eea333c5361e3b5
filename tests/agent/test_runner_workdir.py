"""A job's agent leaves its working directory with only what the machine's backend still reads: the
job's code, HOME and files go as the agent ends (on a fleet instance nobody else would remove them;
on the local backend the server would, in its own process)."""

from __future__ import annotations

from pathlib import Path

from dstack.agent.runner import JobRunner
from dstack.agent.workspace import WORKDIR_KEPT
from dstack.storage.local import DirectoryStorage


def test_the_agent_removes_what_the_job_left_and_keeps_what_the_backend_reads(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path / "bucket")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the job's")
    storage.put_json("job/spec.json", {"commands": ["echo made > made-by-job", "mkdir -p deep/er && touch deep/er/f",
                                                    f"ln -s {outside} escape", "echo done"]})
    workdir = tmp_path / "work"
    (workdir / "ssh").mkdir(parents=True)
    (workdir / "ssh" / "sshd.pid").write_text("1")
    (workdir / "agent.log").write_text("")

    assert JobRunner(storage, "job", workdir).run() == 0

    assert storage.get_json("job/status.json")["status"] == "done"
    assert sorted(p.name for p in workdir.iterdir()) == ["agent.log", "ssh"]
    assert (workdir / "ssh" / "sshd.pid").read_text() == "1"
    assert (outside / "keep").read_text() == "not the job's"  # nothing followed out of the directory
    assert {"agent.log", "ssh", "exited"} == WORKDIR_KEPT
