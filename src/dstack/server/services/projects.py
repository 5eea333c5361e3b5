from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from dstack.core.errors import ForbiddenError, ResourceExistsError, ResourceNotFoundError
from dstack.server.crypto import Encryptor
from dstack.server.models import BackendModel, MemberModel, ProjectModel, UserModel
from dstack.server.schemas import Member, ProjectInfo
from dstack.server.services.backends import backend_info

ROLE_RANK = {"read-only": 0, "user": 1, "admin": 2}
PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,49}")


async def create_project(
    *, session: AsyncSession, encryptor: Encryptor, owner: UserModel, name: str,
    with_local_backend: bool | None = None, creation: str = "everyone",
) -> ProjectModel:
    """`creation` is the server's policy (everyone | admins). The local backend runs jobs on the server's
    own machine, so only a global admin's new project gets it; others start without backends."""
    is_admin = owner.global_role == "admin"
    if creation == "admins" and not is_admin:
        raise ForbiddenError("only global admins can create projects on this server",
                             fix="Ask an admin to create it and add you as a member")
    if with_local_backend is None:
        with_local_backend = is_admin
    if await session.scalar(select(ProjectModel).where(ProjectModel.name == name)):
        raise ResourceExistsError(f"project {name!r} already exists", field="name")
    project = ProjectModel(name=name, owner_id=owner.id)
    session.add(project)
    await session.flush()
    session.add(MemberModel(project_id=project.id, user_id=owner.id, role="admin"))
    if with_local_backend:
        session.add(BackendModel(project_id=project.id, type="local", config=encryptor.encrypt('{"type":"local"}')))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ResourceExistsError(f"project {name!r} already exists", field="name") from None
    return await get_project(session=session, name=name)


async def get_project(*, session: AsyncSession, name: str) -> ProjectModel:
    project = await session.scalar(select(ProjectModel).where(ProjectModel.name == name))
    if project is None:
        raise ResourceNotFoundError(f"project {name!r} does not exist", field="project")
    return project


async def members_of(*, session: AsyncSession, project: ProjectModel) -> list[MemberModel]:
    return list(await session.scalars(select(MemberModel).where(MemberModel.project_id == project.id)))


async def get_project_for(
    *, session: AsyncSession, name: str, user: UserModel, min_role: str = "read-only"
) -> tuple[ProjectModel, str]:
    """The project if `user` holds at least `min_role` in it; non-members see 'does not exist'.
    One query (every API call of a project asks it)."""
    found = (await session.execute(_PROJECT_AND_ROLE, {"name": name, "user_id": user.id})).first()
    project, role = found if found else (None, None)
    _check_role(name, role, user, min_role, exists=project is not None)
    assert project is not None
    return project, "admin" if user.global_role == "admin" else role


# Built once, as _PROJECT_REF below (every API call of a project asks it).
_PROJECT_AND_ROLE = (select(ProjectModel, MemberModel.role)
                     .outerjoin(MemberModel, (MemberModel.project_id == ProjectModel.id)
                                & (MemberModel.user_id == bindparam("user_id")))
                     .where(ProjectModel.name == bindparam("name")))


@dataclass(frozen=True)
class ProjectRef:
    """A project as a page of runs needs it: its id and name, not its backends (a project loaded as a
    model brings them along, a second query, on every request)."""

    id: str
    name: str


async def get_project_ref(*, session: AsyncSession, name: str, user: UserModel,
                          min_role: str = "read-only") -> ProjectRef:
    """As `get_project_for`, with the same errors, reading two columns instead of the project model."""
    found = (await session.execute(_PROJECT_REF, {"name": name, "user_id": user.id})).first()
    _check_role(name, found.role if found else None, user, min_role, exists=found is not None)
    assert found is not None
    return ProjectRef(id=found.id, name=name)


_PROJECT_REF = (select(ProjectModel.id, MemberModel.role)
                .outerjoin(MemberModel, (MemberModel.project_id == ProjectModel.id)
                           & (MemberModel.user_id == bindparam("user_id")))
                .where(ProjectModel.name == bindparam("name")))


def _check_role(name: str, role: str | None, user: UserModel, min_role: str, *, exists: bool) -> None:
    if exists and user.global_role == "admin":
        role = "admin"
    if not exists or role is None:
        raise ResourceNotFoundError(
            f"project {name!r} does not exist or you are not a member", field="project"
        )
    if ROLE_RANK[role] < ROLE_RANK[min_role]:
        raise ForbiddenError(f"this needs the {min_role} role in project {name!r}; you are {role}")


async def list_projects(*, session: AsyncSession, user: UserModel) -> list[ProjectModel]:
    query = select(ProjectModel).order_by(ProjectModel.name).options(selectinload(ProjectModel.members))
    if user.global_role != "admin":
        query = query.join(MemberModel).where(MemberModel.user_id == user.id)
    return list(await session.scalars(query))


async def set_member(*, session: AsyncSession, project: ProjectModel, user: UserModel, role: str) -> None:
    for member in await members_of(session=session, project=project):
        if member.user_id == user.id:
            member.role = role
            break
    else:
        session.add(MemberModel(project_id=project.id, user_id=user.id, role=role))
    await session.commit()


async def remove_member(*, session: AsyncSession, project: ProjectModel, user: UserModel) -> None:
    for member in await members_of(session=session, project=project):
        if member.user_id == user.id:
            await session.delete(member)
            await session.commit()
            return
    raise ResourceNotFoundError(f"{user.name!r} is not a member of {project.name!r}", field="user")


async def project_info(*, session: AsyncSession, encryptor: Encryptor, project: ProjectModel) -> ProjectInfo:
    owner = await session.get(UserModel, project.owner_id)
    return ProjectInfo(
        name=project.name,
        owner=owner.name if owner else "",
        created_at=project.created_at,
        members=[Member(user=m.user.name, role=m.role)  # type: ignore[arg-type]
                 for m in await members_of(session=session, project=project)],
        backends=[backend_info(encryptor, b) for b in project.backends],
    )
