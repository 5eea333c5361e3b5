"""`dstack ps` (columns, paging, `-n`, durations that count the job's real run, one-line reasons)
and `dstack artifacts list / download`, against a real server on the local backend."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tests.harness import Env, Server

QUICK = "type: task\nname: {name}\ncommands: [{command}]\nresources: {{cpu: 1.., memory: 1GB..}}\n"


def _apply(env: Env, repo: Path, name: str, command: str, extra: str = "") -> None:
    (repo / ".dstack.yml").write_text(QUICK.format(name=name, command=command) + extra)
    env.cli("apply", "-y", cwd=repo)


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


def test_duration_counts_the_jobs_real_run(env: Env, server: Server, repo: Path) -> None:
    _apply(env, repo, "five-sleeps", "'for i in 1 2 3 4 5; do sleep 1; echo $i; done'")
    _apply(env, repo, "fails-fast", "exit 3")
    with server.api() as api:
        for name, low, high in (("five-sleeps", 5.0, 8.0), ("fails-fast", 0.0, 3.0)):
            job = api.get(f"/api/projects/main/runs/{name}").json()["jobs"][0]
            assert job["started_at"] and job["finished_at"], job
            ran = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"]))
            assert low <= ran.total_seconds() < high, (name, ran)
    out = env.cli("ps", "-a", cwd=repo).stdout
    assert _row(out, "five-sleeps").split()[-1] in ("5s", "6s", "7s"), out
    assert _row(out, "fails-fast").split()[-1] in ("0s", "1s", "2s"), out
    assert "failed (exit code 3)" in _row(out, "fails-fast")


def test_columns_paging_and_last(env: Env, server: Server, repo: Path) -> None:
    for name in ("first", "second", "third"):
        _apply(env, repo, name, "echo hi")
    out = env.cli("ps", "-a", cwd=repo).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "USER", "BACKEND", "INSTANCE", "RESOURCES", "PRICE", "STATUS", "SUBMITTED", "DURATION"]
    assert all(name in out for name in ("first", "second", "third"))
    assert "admin" in _row(out, "third") and "local (local)" in _row(out, "third")
    last_two = env.cli("ps", "-n", "2", cwd=repo).stdout
    assert "third" in last_two and "second" in last_two and "first" not in last_two
    # The server pages: newest first, each page after the last `submitted_at` of the one before.
    with server.api() as api:
        page1 = api.get("/api/projects/main/runs", params={"all": True, "limit": 2}).json()
        page2 = api.get("/api/projects/main/runs", params={"all": True, "limit": 2,
                                                           "before": page1[-1]["submitted_at"]}).json()
        assert [r["name"] for r in page1 + page2] == ["third", "second", "first"]
        assert api.get("/api/projects/main/runs", params={"all": True, "user": "nobody"}).json() == []
        assert len(api.get("/api/projects/main/runs", params={"all": True, "backend": "local"}).json()) == 3


def test_one_line_reasons() -> None:
    from dstack.cli.ps import one_line
    from dstack.core.runs import JobStatus, status_text

    long = "launch failed: " + "AccessDenied " * 20 + "\n<xml>…</xml>"
    short = one_line(long)
    assert "\n" not in short and len(short) == 60 and short.endswith("…")
    assert status_text(JobStatus.STOPPED, "stopped by user", None) == "stopped by user"
    assert status_text(JobStatus.STOPPED, "inactive for 4s", None) == "stopped (inactive for 4s)"


def test_artifacts_list_and_download(env: Env, server: Server, repo: Path, tmp_path: Path) -> None:
    _apply(env, repo, "makes-files", "'mkdir -p out/sub && echo alpha > out/a.txt && echo beta > out/sub/b.txt'",
           "artifacts: [out]\n")
    listed = env.cli("artifacts", "list", "makes-files", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert "out/a.txt" in listed.stdout and "out/sub/b.txt" in listed.stdout and "6 B" in listed.stdout

    everything = tmp_path / "all"
    result = env.cli("artifacts", "download", "makes-files", "-o", str(everything), cwd=repo)
    assert result.returncode == 0, result.stderr
    assert (everything / "out" / "a.txt").read_text() == "alpha\n"
    assert (everything / "out" / "sub" / "b.txt").read_text() == "beta\n"
    assert "2 files" in result.stdout

    one = tmp_path / "one"
    assert env.cli("artifacts", "download", "makes-files", "out/sub", "-o", str(one), cwd=repo).returncode == 0
    assert [p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file()] == ["out/sub/b.txt"]

    missing = env.cli("artifacts", "download", "makes-files", "out/nope", cwd=repo)
    assert missing.returncode != 0 and "has no artifact 'out/nope'" in missing.stderr
    assert "Traceback" not in missing.stderr
