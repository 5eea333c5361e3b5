"""Project secrets: encrypted in the DB; backends with a secrets service (AWS) mirror them
there at launch. Values are never returned by the API."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import ConfigurationError, ResourceNotFoundError
from dstack.server.crypto import Encryptor
from dstack.server.models import ProjectModel, SecretModel, utcnow

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}\Z")


async def set_secret(*, session: AsyncSession, encryptor: Encryptor, project: ProjectModel, name: str,
                     value: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigurationError(f"{name!r} is not a valid secret name: it becomes an environment variable, "
                                 "so use letters, digits and _ (not starting with a digit)", field="name")
    secret = await session.scalar(
        select(SecretModel).where(SecretModel.project_id == project.id, SecretModel.name == name))
    if secret is None:
        session.add(SecretModel(project_id=project.id, name=name, value=encryptor.encrypt(value)))
    else:
        secret.value = encryptor.encrypt(value)
        secret.updated_at = utcnow()
    await session.commit()


async def list_secret_names(*, session: AsyncSession, project: ProjectModel) -> list[str]:
    return list(await session.scalars(
        select(SecretModel.name).where(SecretModel.project_id == project.id).order_by(SecretModel.name)))


async def delete_secret(*, session: AsyncSession, project: ProjectModel, name: str) -> None:
    secret = await session.scalar(
        select(SecretModel).where(SecretModel.project_id == project.id, SecretModel.name == name))
    if secret is None:
        raise ResourceNotFoundError(f"project {project.name!r} has no secret {name!r}", field="name")
    await session.delete(secret)
    await session.commit()


async def secret_values(*, session: AsyncSession, encryptor: Encryptor, project_id: str) -> dict[str, str]:
    rows = await session.scalars(select(SecretModel).where(SecretModel.project_id == project_id))
    return {s.name: encryptor.decrypt(s.value) for s in rows}
