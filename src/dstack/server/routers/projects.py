from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dstack.server.deps import Ctx, CurrentUser, ProjectAdmin, ProjectReader, ProjectUser, Session
from dstack.server.schemas import (
    ERROR_RESPONSES,
    BackendCheck,
    CreateProjectRequest,
    InitRepoRequest,
    ProjectInfo,
    RepoCredentialsRequest,
    SetMemberRequest,
    SetSecretRequest,
)
from dstack.server.services import backends as backends_svc
from dstack.server.services import projects as svc
from dstack.server.services import repo_credentials as repo_credentials_svc
from dstack.server.services import secrets as secrets_svc
from dstack.server.services.repos import init_repo
from dstack.server.services.users import get_user

router = APIRouter(prefix="/api/projects", tags=["projects"], responses=ERROR_RESPONSES)


@router.get("")
async def list_projects(user: CurrentUser, session: Session, ctx: Ctx) -> list[ProjectInfo]:
    projects = await svc.list_projects(session=session, user=user)
    return [await svc.project_info(session=session, encryptor=ctx.encryptor, project=p) for p in projects]


@router.post("", status_code=201)
async def create_project(body: CreateProjectRequest, user: CurrentUser, session: Session, ctx: Ctx) -> ProjectInfo:
    project = await svc.create_project(session=session, encryptor=ctx.encryptor, owner=user, name=body.name,
                                       creation=ctx.settings.project_creation)
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.get("/{project_name}")
async def get_project(project: ProjectReader, session: Session, ctx: Ctx) -> ProjectInfo:
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.put("/{project_name}/members")
async def set_member(body: SetMemberRequest, project: ProjectAdmin, session: Session, ctx: Ctx) -> ProjectInfo:
    member = await get_user(session=session, name=body.user)
    await svc.set_member(session=session, project=project, user=member, role=body.role)
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.delete("/{project_name}/members/{user_name}")
async def remove_member(user_name: str, project: ProjectAdmin, session: Session, ctx: Ctx) -> ProjectInfo:
    member = await get_user(session=session, name=user_name)
    await svc.remove_member(session=session, project=project, user=member)
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.post("/{project_name}/backends/check")
async def check_backend(config: dict[str, Any], project: ProjectAdmin, ctx: Ctx) -> BackendCheck:
    """Validate a backend form as it is filled: errors by field, and choices for fields. Masked
    secrets (`********`, as an edit form shows them) are the stored ones."""
    return await backends_svc.check_backend_form(config=backends_svc.with_stored_secrets(
        config=config, project=project, encryptor=ctx.encryptor))


@router.post("/{project_name}/backends", status_code=201)
async def add_backend(config: dict[str, Any], project: ProjectAdmin, user: CurrentUser, session: Session,
                      ctx: Ctx) -> ProjectInfo:
    await backends_svc.add_backend(session=session, encryptor=ctx.encryptor, project=project, config=config,
                                   user=user)
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.put("/{project_name}/backends")
async def update_backend(config: dict[str, Any], project: ProjectAdmin, session: Session, ctx: Ctx) -> ProjectInfo:
    await backends_svc.update_backend(session=session, encryptor=ctx.encryptor, project=project, config=config)
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.delete("/{project_name}/backends/{backend_type}")
async def delete_backend(backend_type: str, project: ProjectAdmin, session: Session, ctx: Ctx) -> ProjectInfo:
    await backends_svc.delete_backend(session=session, project=project, backend_type=backend_type)
    return await svc.project_info(session=session, encryptor=ctx.encryptor, project=project)


@router.post("/{project_name}/repos")
async def init_repository(body: InitRepoRequest, project: ProjectUser, session: Session) -> dict[str, str]:
    await init_repo(session=session, project=project, repo_id=body.repo_id, info=body.info)
    return {"repo_id": body.repo_id}


@router.put("/{project_name}/repos/credentials", status_code=204)
async def set_repo_credentials(body: RepoCredentialsRequest, project: ProjectUser, session: Session,
                               ctx: Ctx) -> None:
    """Git credentials for cloning a private repo URL (stored encrypted; never returned)."""
    await repo_credentials_svc.set_credentials(
        session=session, encryptor=ctx.encryptor, project=project, url=body.url, token=body.token,
        username=body.username, private_key=body.private_key, known_hosts=body.known_hosts)


@router.get("/{project_name}/repos/credentials")
async def list_repo_credentials(project: ProjectReader, session: Session) -> list[str]:
    """The URLs that have credentials (never the credentials)."""
    return await repo_credentials_svc.list_urls(session=session, project=project)


@router.delete("/{project_name}/repos/credentials", status_code=204)
async def delete_repo_credentials(url: str, project: ProjectUser, session: Session) -> None:
    await repo_credentials_svc.delete_credentials(session=session, project=project, url=url)


@router.get("/{project_name}/secrets")
async def list_secrets(project: ProjectReader, session: Session) -> list[str]:
    """Secret names only: values are never returned."""
    return await secrets_svc.list_secret_names(session=session, project=project)


@router.put("/{project_name}/secrets/{name}", status_code=204)
async def set_secret(name: str, body: SetSecretRequest, project: ProjectAdmin, session: Session, ctx: Ctx) -> None:
    await secrets_svc.set_secret(session=session, encryptor=ctx.encryptor, project=project, name=name,
                                 value=body.value)


@router.delete("/{project_name}/secrets/{name}", status_code=204)
async def delete_secret(name: str, project: ProjectAdmin, session: Session, ctx: Ctx) -> None:
    await secrets_svc.delete_secret(session=session, project=project, name=name, settings=ctx.settings,
                                    encryptor=ctx.encryptor)

