"""Repos (directories users run from) and their code archives (kept in the DB)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import ConfigurationError, PayloadTooLargeError, ResourceNotFoundError
from dstack.server.models import CodeModel, ProjectModel, RepoModel

MAX_CODE_BYTES = 128 * 2**20


MAX_REPO_INFO_BYTES = 64 * 1024


async def init_repo(*, session: AsyncSession, project: ProjectModel, repo_id: str, info: dict[str, Any]) -> None:
    if len(json.dumps(info)) > MAX_REPO_INFO_BYTES:
        raise PayloadTooLargeError(f"info: over the {MAX_REPO_INFO_BYTES // 1024} KiB limit", field="info")
    repo = await session.scalar(
        select(RepoModel).where(RepoModel.project_id == project.id, RepoModel.repo_id == repo_id)
    )
    if repo is None:
        session.add(RepoModel(project_id=project.id, repo_id=repo_id, info=json.dumps(info)))
    else:
        repo.info = json.dumps(info)
    await session.commit()


async def check_repo(*, session: AsyncSession, project: ProjectModel, repo_id: str) -> None:
    repo = await session.scalar(_REPO, {"project_id": project.id, "repo_id": repo_id})
    if repo is None:
        raise ResourceNotFoundError(
            f"repo {repo_id!r} is not initialized in project {project.name!r}",
            field="repo_id",
            fix="Run `dstack init` in the directory first",
        )


async def upload_code(*, session: AsyncSession, project: ProjectModel, code_hash: str, data: bytes) -> None:
    if len(data) > MAX_CODE_BYTES:
        raise ConfigurationError(
            f"the code archive is {len(data) / 2**20:.0f} MB; the limit is {MAX_CODE_BYTES // 2**20} MB",
            fix="Add large files to .dstackignore",
        )
    if hashlib.sha256(data).hexdigest() != code_hash:
        raise ConfigurationError("the code archive does not match its sha256", field="code_hash")
    if await code_exists(session=session, project=project, code_hash=code_hash):
        return
    session.add(CodeModel(project_id=project.id, code_hash=code_hash, data=data))
    try:
        await session.commit()
    except IntegrityError:  # the same archive uploaded twice at once
        await session.rollback()


async def code_exists(*, session: AsyncSession, project: ProjectModel, code_hash: str) -> bool:
    found = await session.scalar(_CODE_ID, {"project_id": project.id, "code_hash": code_hash})
    return found is not None


# Built once, as _CODE_DATA below: asked for every submitted run.
_REPO = select(RepoModel.id).where(RepoModel.project_id == bindparam("project_id"),
                                   RepoModel.repo_id == bindparam("repo_id"))
_CODE_ID = select(CodeModel.id).where(CodeModel.project_id == bindparam("project_id"),
                                      CodeModel.code_hash == bindparam("code_hash"))


# Built once: read for every job the scheduler launches.
_CODE_DATA = select(CodeModel.data).where(CodeModel.project_id == bindparam("project_id"),
                                          CodeModel.code_hash == bindparam("code_hash"))


async def get_code(*, session: AsyncSession, project_id: str, code_hash: str) -> bytes:
    data = await session.scalar(_CODE_DATA, {"project_id": project_id, "code_hash": code_hash})
    if data is None:
        raise ResourceNotFoundError(f"code archive {code_hash} is missing", field="code_hash")
    return data
