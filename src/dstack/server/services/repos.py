"""Repos (directories users run from) and their code archives."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import ConfigurationError, ResourceNotFoundError
from dstack.server.models import ProjectModel, RepoModel
from dstack.server.services.backends import project_storage
from dstack.server.settings import Settings
from dstack.storage.layout import code_key

MAX_CODE_BYTES = 256 * 2**20


async def init_repo(*, session: AsyncSession, project: ProjectModel, repo_id: str, info: dict[str, Any]) -> None:
    repo = await session.scalar(
        select(RepoModel).where(RepoModel.project_id == project.id, RepoModel.repo_id == repo_id)
    )
    if repo is None:
        session.add(RepoModel(project_id=project.id, repo_id=repo_id, info=json.dumps(info)))
    else:
        repo.info = json.dumps(info)
    await session.commit()


async def check_repo(*, session: AsyncSession, project: ProjectModel, repo_id: str) -> None:
    repo = await session.scalar(
        select(RepoModel.id).where(RepoModel.project_id == project.id, RepoModel.repo_id == repo_id)
    )
    if repo is None:
        raise ResourceNotFoundError(
            f"repo {repo_id!r} is not initialized in project {project.name!r}",
            field="repo_id",
            fix="Run `dstack init` in the directory first",
        )


async def upload_code(*, settings: Settings, project: ProjectModel, code_hash: str, data: bytes) -> None:
    if len(data) > MAX_CODE_BYTES:
        raise ConfigurationError(
            f"the code archive is {len(data) / 2**20:.0f} MB; the limit is {MAX_CODE_BYTES // 2**20} MB",
            fix="Add large files to .dstackignore",
        )
    if hashlib.sha256(data).hexdigest() != code_hash:
        raise ConfigurationError("the code archive does not match its sha256", field="code_hash")
    storage = project_storage(settings=settings, project=project.name)
    await asyncio.to_thread(storage.put, code_key(code_hash), data)


async def code_exists(*, settings: Settings, project: ProjectModel, code_hash: str) -> bool:
    storage = project_storage(settings=settings, project=project.name)
    return await asyncio.to_thread(storage.exists, code_key(code_hash))
