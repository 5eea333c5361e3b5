"""Backend configs of a project, and the compute/storage objects built from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.backends.base import Compute
from dstack.backends.local import configurator as local_configurator
from dstack.backends.local.compute import LocalCompute
from dstack.backends.local.models import LocalBackendConfig
from dstack.core.errors import ConfigurationError, ResourceExistsError, ResourceNotFoundError
from dstack.server.models import BackendModel, ProjectModel
from dstack.server.schemas import BackendInfo
from dstack.server.settings import Settings
from dstack.storage import Storage
from dstack.storage.local import DirectoryStorage


@dataclass(frozen=True)
class BackendType:
    config_model: type[BaseModel]
    configurator: Any


BACKEND_TYPES: dict[str, BackendType] = {
    "local": BackendType(LocalBackendConfig, local_configurator),
}


def validate_backend_config(config: dict[str, Any]) -> BaseModel:
    backend_type = BACKEND_TYPES.get(str(config.get("type")))
    if backend_type is None:
        raise ConfigurationError(
            f"unknown backend type {config.get('type')!r}: choose one of {', '.join(BACKEND_TYPES)}", field="type"
        )
    try:
        return backend_type.configurator.validate_config(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigurationError(f"{field}: {err['msg']}", field=field) from None


async def add_backend(*, session: AsyncSession, project: ProjectModel, config: dict[str, Any]) -> BackendModel:
    model = validate_backend_config(config)
    backend_type = model.type  # type: ignore[attr-defined]
    if any(b.type == backend_type for b in project.backends):
        raise ResourceExistsError(f"project {project.name!r} already has a {backend_type} backend", field="type")
    backend = BackendModel(project_id=project.id, type=backend_type, config=model.model_dump_json())
    session.add(backend)
    await session.commit()
    await session.refresh(project, ["backends"])
    return backend


async def delete_backend(*, session: AsyncSession, project: ProjectModel, backend_type: str) -> None:
    for backend in project.backends:
        if backend.type == backend_type:
            await session.delete(backend)
            await session.commit()
            await session.refresh(project, ["backends"])
            return
    raise ResourceNotFoundError(f"project {project.name!r} has no {backend_type} backend", field="type")


def backend_info(backend: BackendModel) -> BackendInfo:
    return BackendInfo(type=backend.type, config=json.loads(backend.config))


def project_storage(*, settings: Settings, project: str) -> Storage:
    """The project's bucket. Cloud backends bring their own; the local one is a directory."""
    return DirectoryStorage(settings.project_bucket(project))


def compute_for(*, settings: Settings, project: str, backend_type: str) -> Compute:
    if backend_type == "local":
        return LocalCompute(storage=project_storage(settings=settings, project=project), workdirs=settings.workdirs)
    raise ConfigurationError(f"backend type {backend_type!r} is not available on this server", field="type")
