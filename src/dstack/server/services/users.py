from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import AuthenticationError, ResourceExistsError, ResourceNotFoundError
from dstack.server.models import UserModel
from dstack.server.schemas import UserInfo, UserWithToken


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def create_user(
    *, session: AsyncSession, name: str, global_role: str, token: str | None = None
) -> tuple[UserModel, str]:
    if await session.scalar(select(UserModel).where(UserModel.name == name)):
        raise ResourceExistsError(f"user {name!r} already exists", field="name")
    token = token or new_token()
    user = UserModel(name=name, global_role=global_role, token_hash=hash_token(token))
    session.add(user)
    await session.commit()
    return user, token


async def authenticate(*, session: AsyncSession, token: str | None) -> UserModel:
    if not token:
        raise AuthenticationError(
            "no token given", fix="Pass `Authorization: Bearer TOKEN` (the CLI reads it from ~/.dstack/config.yml)"
        )
    digest = hash_token(token)
    user = await session.scalar(_BY_TOKEN, {"digest": digest})
    # The lookup is by hash; compare again in constant time for good measure.
    if user is None or not hmac.compare_digest(user.token_hash, digest):
        raise AuthenticationError("invalid token", fix="Check the token, or ask an admin for a new one")
    return user


# Built once (asked by every API call): a statement keeps its cache key.
_BY_TOKEN = select(UserModel).where(UserModel.token_hash == bindparam("digest"))


async def get_user(*, session: AsyncSession, name: str) -> UserModel:
    user = await session.scalar(select(UserModel).where(UserModel.name == name))
    if user is None:
        raise ResourceNotFoundError(f"user {name!r} does not exist", field="user")
    return user


async def list_users(*, session: AsyncSession) -> list[UserModel]:
    return list(await session.scalars(select(UserModel).order_by(UserModel.name)))


async def rotate_token(*, session: AsyncSession, user: UserModel) -> str:
    token = new_token()
    user.token_hash = hash_token(token)
    await session.commit()
    return token


def user_info(user: UserModel) -> UserInfo:
    return UserInfo(name=user.name, global_role=user.global_role, created_at=user.created_at)  # type: ignore[arg-type]


def user_with_token(user: UserModel, token: str) -> UserWithToken:
    return UserWithToken(**user_info(user).model_dump(), token=token)
