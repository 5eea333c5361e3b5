"""FastAPI dependencies: DB session, the calling user, and project access by role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import ForbiddenError
from dstack.server.context import ServerContext
from dstack.server.models import ProjectModel, UserModel
from dstack.server.services.projects import ProjectRef, get_project_for, get_project_ref
from dstack.server.services.users import authenticate

TOKEN_COOKIE = "dstack_token"


async def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


async def get_session(ctx: Annotated[ServerContext, Depends(get_ctx)]) -> AsyncIterator[AsyncSession]:
    async with ctx.db.session() as session:
        yield session


Ctx = Annotated[ServerContext, Depends(get_ctx)]
Session = Annotated[AsyncSession, Depends(get_session)]


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(TOKEN_COOKIE)


async def get_user(request: Request, session: Session) -> UserModel:
    return await authenticate(session=session, token=request_token(request))


CurrentUser = Annotated[UserModel, Depends(get_user)]


async def get_admin(user: CurrentUser) -> UserModel:
    if user.global_role != "admin":
        raise ForbiddenError("only global admins can do this")
    return user


Admin = Annotated[UserModel, Depends(get_admin)]


def project_access(min_role: str):  # noqa: ANN201 - returns a FastAPI dependency
    async def _dep(project_name: Annotated[str, Path(max_length=100)], user: CurrentUser,
                   session: Session) -> ProjectModel:
        project, _role = await get_project_for(session=session, name=project_name, user=user, min_role=min_role)
        # Hand the pooled connection back (the loaded rows stay usable): a handler that opens a session of
        # its own (planning does) must not hold two at once, or as many concurrent requests as the pool
        # has connections would each wait for a second one until the pool's timeout.
        await session.commit()
        return project

    return _dep


ProjectReader = Annotated[ProjectModel, Depends(project_access("read-only"))]


async def _project_ref(project_name: Annotated[str, Path(max_length=100)], user: CurrentUser,
                       session: Session) -> ProjectRef:
    return await get_project_ref(session=session, name=project_name, user=user)


# The read-only access of a route that needs only the project's id and name (a page of runs).
ProjectRefReader = Annotated[ProjectRef, Depends(_project_ref)]
ProjectUser = Annotated[ProjectModel, Depends(project_access("user"))]
ProjectAdmin = Annotated[ProjectModel, Depends(project_access("admin"))]
