"""What the benchmarks share."""

from __future__ import annotations

from tests.harness import Env, Server

from dstack.api.client import Client
from dstack.api.code import build_archive, repo_id_for


def uploaded_repo(server: Server, env: Env, name: str) -> tuple[Client, str, str]:
    """A client of the server's `main` project and an empty repo registered with its code uploaded:
    (client, repo id, code hash), ready for `RunSpec`s."""
    repo = env.home / name
    repo.mkdir()
    client = Client(url=server.url, token=env.token(), project="main")
    repo_id = repo_id_for(repo)
    client.repos.init(repo_id)
    data, code_hash = build_archive(repo)
    client.repos.upload_code(data, code_hash)
    return client, repo_id, code_hash
