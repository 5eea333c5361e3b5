"""Git credentials for private repo URLs (`repos: [https://…]`), registered per project with
`dstack init --repo URL --token …` (or `--git-identity KEY`), kept encrypted, and handed to the
job's agent for the clone only (never to the job: see dstack/agent/workspace.py)."""

from __future__ import annotations

import hashlib
import json
import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import ConfigurationError, ResourceNotFoundError
from dstack.server.crypto import Encryptor
from dstack.server.models import ProjectModel, RepoCredentialModel

# The reserved secret name they travel under (`:` and the URL's hash; not a valid user secret name).
REPO_CREDENTIALS = "__dstack_repo_credentials"
_URL_RE = re.compile(r"^(https?://|ssh://|[\w.-]+@[\w.-]+:)\S+\Z")


def normalize_url(url: str) -> str:
    return url.strip().removesuffix("/").removesuffix(".git")


def secret_name(url: str) -> str:
    return f"{REPO_CREDENTIALS}:{hashlib.sha256(normalize_url(url).encode()).hexdigest()[:16]}"


async def set_credentials(*, session: AsyncSession, encryptor: Encryptor, project: ProjectModel, url: str,
                          token: str | None, username: str | None, private_key: str | None,
                          known_hosts: list[str]) -> None:
    if not _URL_RE.match(url.strip()):
        raise ConfigurationError(f"url: {url!r} is not a git URL (https://…, ssh://… or git@host:org/repo)",
                                 field="url")
    if (token is None) == (private_key is None):
        raise ConfigurationError("give either a token (https URLs) or a private key (ssh URLs)", field="token")
    if private_key is not None and not known_hosts:
        raise ConfigurationError("a private key needs the host's keys to pin (known_hosts lines)",
                                 field="known_hosts", fix="ssh-keyscan HOST, check the keys, and pass them")
    value = json.dumps({"token": token, "username": username, "private_key": private_key,
                        "known_hosts": known_hosts})
    key = normalize_url(url)
    row = await session.scalar(select(RepoCredentialModel).where(
        RepoCredentialModel.project_id == project.id, RepoCredentialModel.url == key))
    if row is None:
        session.add(RepoCredentialModel(project_id=project.id, url=key, value=encryptor.encrypt(value)))
    else:
        row.value = encryptor.encrypt(value)
    await session.commit()


async def list_urls(*, session: AsyncSession, project: ProjectModel) -> list[str]:
    return list(await session.scalars(select(RepoCredentialModel.url).where(
        RepoCredentialModel.project_id == project.id).order_by(RepoCredentialModel.url)))


async def delete_credentials(*, session: AsyncSession, project: ProjectModel, url: str) -> None:
    row = await session.scalar(select(RepoCredentialModel).where(
        RepoCredentialModel.project_id == project.id, RepoCredentialModel.url == normalize_url(url)))
    if row is None:
        raise ResourceNotFoundError(f"project {project.name!r} has no credentials for {url}", field="url")
    await session.delete(row)
    await session.commit()


async def credentials_for(*, session: AsyncSession, encryptor: Encryptor, project: ProjectModel,
                          url: str) -> dict[str, str] | None:
    """The credentials registered for this URL, or for the longest URL prefix of it (an org)."""
    wanted = normalize_url(url)
    rows = list(await session.scalars(select(RepoCredentialModel).where(
        RepoCredentialModel.project_id == project.id)))
    matches = [r for r in rows if wanted == r.url or wanted.startswith(r.url + "/")]
    if not matches:
        return None
    best = max(matches, key=lambda r: len(r.url))
    return json.loads(encryptor.decrypt(best.value))
