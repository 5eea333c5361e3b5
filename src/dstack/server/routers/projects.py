from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dstack.server.deps import CurrentUser, ProjectAdmin, ProjectReader, Session
from dstack.server.schemas import CreateProjectRequest, InitRepoRequest, ProjectInfo, SetMemberRequest
from dstack.server.services import backends as backends_svc
from dstack.server.services import projects as svc
from dstack.server.services.repos import init_repo
from dstack.server.services.users import get_user

router = APIRouter(prefix="/api/projects", tags=["projects"])


@router.get("")
async def list_projects(user: CurrentUser, session: Session) -> list[ProjectInfo]:
    return [await svc.project_info(session=session, project=p) for p in await svc.list_projects(session=session,
                                                                                               user=user)]


@router.post("", status_code=201)
async def create_project(body: CreateProjectRequest, user: CurrentUser, session: Session) -> ProjectInfo:
    project = await svc.create_project(session=session, owner=user, name=body.name)
    return await svc.project_info(session=session, project=project)


@router.get("/{project_name}")
async def get_project(project: ProjectReader, session: Session) -> ProjectInfo:
    return await svc.project_info(session=session, project=project)


@router.put("/{project_name}/members")
async def set_member(body: SetMemberRequest, project: ProjectAdmin, session: Session) -> ProjectInfo:
    member = await get_user(session=session, name=body.user)
    await svc.set_member(session=session, project=project, user=member, role=body.role)
    return await svc.project_info(session=session, project=project)


@router.delete("/{project_name}/members/{user_name}")
async def remove_member(user_name: str, project: ProjectAdmin, session: Session) -> ProjectInfo:
    member = await get_user(session=session, name=user_name)
    await svc.remove_member(session=session, project=project, user=member)
    return await svc.project_info(session=session, project=project)


@router.post("/{project_name}/backends", status_code=201)
async def add_backend(config: dict[str, Any], project: ProjectAdmin, session: Session) -> ProjectInfo:
    await backends_svc.add_backend(session=session, project=project, config=config)
    return await svc.project_info(session=session, project=project)


@router.delete("/{project_name}/backends/{backend_type}")
async def delete_backend(backend_type: str, project: ProjectAdmin, session: Session) -> ProjectInfo:
    await backends_svc.delete_backend(session=session, project=project, backend_type=backend_type)
    return await svc.project_info(session=session, project=project)


@router.post("/{project_name}/repos")
async def init_repository(body: InitRepoRequest, project: ProjectReader, session: Session) -> dict[str, str]:
    await init_repo(session=session, project=project, repo_id=body.repo_id, info=body.info)
    return {"repo_id": body.repo_id}
