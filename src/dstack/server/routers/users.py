from __future__ import annotations

from fastapi import APIRouter

from dstack.server.deps import Admin, CurrentUser, Session
from dstack.server.schemas import ERROR_RESPONSES, CreateUserRequest, UserInfo, UserWithToken
from dstack.server.services import users as svc

router = APIRouter(prefix="/api/users", tags=["users"], responses=ERROR_RESPONSES)


@router.get("/me")
async def me(user: CurrentUser) -> UserInfo:
    return svc.user_info(user)


@router.get("")
async def list_users(_admin: Admin, session: Session) -> list[UserInfo]:
    return [svc.user_info(u) for u in await svc.list_users(session=session)]


@router.post("", status_code=201)
async def create_user(body: CreateUserRequest, _admin: Admin, session: Session) -> UserWithToken:
    user, token = await svc.create_user(session=session, name=body.name, global_role=body.global_role)
    return svc.user_with_token(user, token)


@router.post("/{name}/token")
async def rotate_token(name: str, _admin: Admin, session: Session) -> UserWithToken:
    user = await svc.get_user(session=session, name=name)
    return svc.user_with_token(user, await svc.rotate_token(session=session, user=user))
