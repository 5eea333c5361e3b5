"""Backend configs of a project (encrypted at rest, masked in responses) and the compute
objects built from them."""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.backends.base import BackendContext, Compute
from dstack.core.errors import ConfigurationError, ForbiddenError, ResourceExistsError, ResourceNotFoundError
from dstack.server.crypto import Encryptor
from dstack.server.models import BackendModel, ProjectModel, UserModel
from dstack.server.schemas import BackendCheck, BackendInfo, FieldError
from dstack.server.settings import Settings

MASK = "********"


@dataclass(frozen=True)
class BackendType:
    """Where a backend's modules live; imported on first use (boto3 is heavy)."""

    package: str
    title: str

    @property
    def models(self) -> Any:
        return importlib.import_module(f"{self.package}.models")

    @property
    def configurator(self) -> Any:
        return importlib.import_module(f"{self.package}.configurator")

    @property
    def compute_class(self) -> type[Compute]:
        return importlib.import_module(f"{self.package}.compute").COMPUTE_CLASS


BACKEND_TYPES: dict[str, BackendType] = {
    "local": BackendType("dstack.backends.local", "Local"),
    "aws": BackendType("dstack.backends.aws", "AWS"),
    "lambda": BackendType("dstack.backends.lambdacloud", "Lambda"),
}


def backend_type(name: str) -> BackendType:
    found = BACKEND_TYPES.get(str(name))
    if found is None:
        raise ConfigurationError(f"unknown backend type {name!r}: choose one of {', '.join(BACKEND_TYPES)}",
                                 field="type")
    return found


def parse_backend_config(config: dict[str, Any]) -> BaseModel:
    """Validate the form's fields (types, required ones) without calling the cloud."""
    kind = backend_type(config.get("type", ""))
    try:
        return kind.models.CONFIG_MODEL.model_validate(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        message = "this field is required" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{field}: {message}", field=field) from None


def secret_fields(model: BaseModel) -> set[str]:
    return set(getattr(type(model), "SECRET_FIELDS", set()))


def masked(config: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
    """A copy with secrets masked (nested paths like `credentials.secret_access_key`)."""
    out = json.loads(json.dumps(config))
    for path in secrets:
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf):
            node[leaf] = MASK
    return out


def unmask(new: dict[str, Any], old: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
    """Masked values sent back by a form keep the stored secret."""
    out = json.loads(json.dumps(new))
    for path in secrets:
        *parents, leaf = path.split(".")
        node, old_node = out, old
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            old_node = old_node.get(part) if isinstance(old_node, dict) else None
        if isinstance(node, dict) and node.get(leaf) == MASK and isinstance(old_node, dict):
            node[leaf] = old_node.get(leaf)
    return out


def load_config(encryptor: Encryptor, backend: BackendModel) -> dict[str, Any]:
    raw = backend.config
    return json.loads(encryptor.decrypt(raw) if raw.startswith("enc:") else raw)


def with_stored_secrets(*, config: dict[str, Any], project: ProjectModel, encryptor: Encryptor) -> dict[str, Any]:
    """The form's config with each masked secret replaced by the stored backend's (an edit)."""
    existing = next((b for b in project.backends if b.type == config.get("type")), None)
    if existing is None:
        return config
    old = load_config(encryptor, existing)
    try:
        secrets = secret_fields(parse_backend_config(old))
    except Exception:  # noqa: BLE001 - a stored config that no longer parses: check the form as sent
        return config
    return unmask(config, old, secrets)


async def check_backend_form(*, config: dict[str, Any]) -> BackendCheck:
    """For a form being filled: never raises, reports what is wrong and what can be chosen."""
    import asyncio

    kind = BACKEND_TYPES.get(str(config.get("type")))
    notes = kind.configurator.form_notes(config) if kind and hasattr(kind.configurator, "form_notes") else []
    try:
        model = parse_backend_config(config)
    except ConfigurationError as exc:
        # With fields missing, check what is filled in: that also yields choices (regions, buckets).
        partial = await asyncio.to_thread(_partial_check, config)
        errors = [FieldError(field=exc.field, message=str(exc)), *partial.errors]
        return BackendCheck(ok=False, errors=errors, choices=partial.choices, notes=notes)
    configurator = backend_type(model.type).configurator  # type: ignore[attr-defined]
    result = await asyncio.to_thread(configurator.check_form, model)
    result.notes = notes
    return result


def _partial_check(config: dict[str, Any]) -> BackendCheck:
    kind = BACKEND_TYPES.get(str(config.get("type")))
    if kind is None or not hasattr(kind.configurator, "partial_check"):
        return BackendCheck(ok=False)
    return kind.configurator.partial_check(config)


async def validate_backend(*, config: dict[str, Any]) -> tuple[BaseModel, dict[str, Any]]:
    """Full validation against the cloud; returns the model and the choices for its fields."""
    import asyncio

    model = parse_backend_config(config)
    choices = await asyncio.to_thread(backend_type(model.type).configurator.check, model)  # type: ignore[attr-defined]
    return model, choices


async def add_backend(*, session: AsyncSession, encryptor: Encryptor, project: ProjectModel,
                      config: dict[str, Any], user: UserModel) -> BackendModel:
    kind = str(config.get("type"))
    if kind == "local" and user.global_role != "admin":
        raise ForbiddenError("only global admins can add the local backend: it runs jobs on the server's own "
                             "machine", field="type", fix="Add a cloud backend, or ask a global admin")
    existing = next((b for b in project.backends if b.type == kind), None)
    if existing is not None:
        raise ResourceExistsError(f"project {project.name!r} already has a {kind} backend", field="type",
                                  fix="Edit it instead, or delete it first")
    model, _ = await validate_backend(config=config)
    backend = BackendModel(project_id=project.id, type=model.type,  # type: ignore[attr-defined]
                           config=encryptor.encrypt(model.model_dump_json()))
    session.add(backend)
    await session.commit()
    await session.refresh(project, ["backends"])
    return backend


async def update_backend(*, session: AsyncSession, encryptor: Encryptor, project: ProjectModel,
                         config: dict[str, Any]) -> BackendModel:
    kind = str(config.get("type"))
    backend = next((b for b in project.backends if b.type == kind), None)
    if backend is None:
        raise ResourceNotFoundError(f"project {project.name!r} has no {kind} backend", field="type")
    old = load_config(encryptor, backend)
    secrets = secret_fields(parse_backend_config(old))
    model, _ = await validate_backend(config=unmask(config, old, secrets))
    backend.config = encryptor.encrypt(model.model_dump_json())
    backend.warning = backend.warning_at = None  # checked just now
    await session.commit()
    return backend


async def delete_backend(*, session: AsyncSession, project: ProjectModel, backend_type: str) -> None:
    for backend in project.backends:
        if backend.type == backend_type:
            await session.delete(backend)
            await session.commit()
            await session.refresh(project, ["backends"])
            return
    raise ResourceNotFoundError(f"project {project.name!r} has no {backend_type} backend", field="type")


def backend_info(encryptor: Encryptor, backend: BackendModel) -> BackendInfo:
    config = load_config(encryptor, backend)
    model = parse_backend_config(config)
    return BackendInfo(type=backend.type, config=masked(config, secret_fields(model)), warning=backend.warning,
                       warning_at=backend.warning_at)


_COMPUTES: dict[tuple[str, str, str], Compute] = {}
_COMPUTES_LOCK = threading.Lock()


def compute_for(*, settings: Settings, encryptor: Encryptor, project: ProjectModel, backend_type: str) -> Compute:
    """The project's compute of that type; cached per config so clouds' caches (prices, IAM) persist."""
    if backend_type == "ssh":  # SSH fleets: no backend to configure, every project has them
        return _ssh_compute(settings, project)
    backend = next((b for b in project.backends if b.type == backend_type), None)
    if backend is None:
        raise ConfigurationError(f"project {project.name!r} has no {backend_type} backend (it was deleted?)",
                                 field="backend")
    digest = hashlib.sha256(backend.config.encode()).hexdigest()
    key = (project.name, backend_type, digest)
    with _COMPUTES_LOCK:
        compute = _COMPUTES.get(key)
        if compute is None:
            kind = BACKEND_TYPES[backend_type]
            model = kind.models.CONFIG_MODEL.model_validate(load_config(encryptor, backend))
            context = BackendContext(project=project.name, server_dir=settings.server_dir,
                                     reaper_grace=settings.reaper_grace, private_paths=settings.private_paths,
                                     local_job_user=settings.local_job_user,
                                     local_jobs_dir=settings.local_jobs_dir,
                                     local_ssh_host=settings.local_ssh_host)
            compute = kind.compute_class(model, context)
            _COMPUTES[key] = compute
        return compute


def _ssh_compute(settings: Settings, project: ProjectModel) -> Compute:
    from dstack.backends.ssh.compute import SSHCompute
    from dstack.backends.ssh.models import SSHFleetConfig

    key = (project.name, "ssh", "")
    with _COMPUTES_LOCK:
        compute = _COMPUTES.get(key)
        if compute is None:
            compute = SSHCompute(SSHFleetConfig(), BackendContext(project=project.name, server_dir=settings.server_dir))
            _COMPUTES[key] = compute
        return compute
