"""Project secrets: encrypted in the DB; backends with a secrets service (AWS) mirror them
there at launch. Values are never returned by the API."""

from __future__ import annotations

import asyncio
import logging
import re

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.core.errors import ConfigurationError, ResourceNotFoundError
from dstack.server.crypto import Encryptor
from dstack.server.models import ProjectModel, SecretModel, utcnow
from dstack.server.settings import Settings

logger = logging.getLogger(__name__)

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


async def delete_secret(*, session: AsyncSession, project: ProjectModel, name: str,
                        settings: Settings | None = None, encryptor: Encryptor | None = None) -> None:
    """Delete it here and from every backend's secrets service that mirrors it (where instances
    could still read it, and where it is billed)."""
    secret = await session.scalar(
        select(SecretModel).where(SecretModel.project_id == project.id, SecretModel.name == name))
    if secret is None:
        raise ResourceNotFoundError(f"project {project.name!r} has no secret {name!r}", field="name")
    await session.delete(secret)
    await session.commit()
    if settings is None or encryptor is None:
        return
    from dstack.server.services.backends import compute_for

    for backend in project.backends:
        try:
            compute = compute_for(settings=settings, encryptor=encryptor, project=project, backend_type=backend.type)
            await asyncio.to_thread(compute.delete_secret, project=project.name, name=name)
        except Exception as exc:  # noqa: BLE001 - the secret is gone here; say what is left there
            logger.warning("secret %s of project %s is deleted, but not from the %s backend: %s",
                           name, project.name, backend.type, exc)


# Built once: read for every job the scheduler launches.
_PROJECT_SECRETS = select(SecretModel).where(SecretModel.project_id == bindparam("project_id"))


async def secret_values(*, session: AsyncSession, encryptor: Encryptor, project_id: str) -> dict[str, str]:
    rows = await session.scalars(_PROJECT_SECRETS, {"project_id": project_id})
    return {s.name: encryptor.decrypt(s.value) for s in rows}
