"""The server's config file, {server_dir}/config.yml: projects and their backends, applied at
start with the same checks as the web form and the API.

    projects:
      - name: main
        backends:
          - type: aws
            region: us-east-1
            bucket: my-dstack-bucket
            credentials: {type: default}
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from dstack.core.errors import ConfigurationError, DstackError
from dstack.server.context import ServerContext
from dstack.server.models import ProjectModel, UserModel
from dstack.server.services.backends import add_backend, load_config, parse_backend_config, update_backend
from dstack.server.services.projects import PROJECT_NAME, create_project


def read(ctx: ServerContext) -> list[dict[str, Any]] | None:
    path = ctx.settings.server_dir / "config.yml"
    if not path.exists():
        return None
    import yaml  # noqa: PLC0415 - only when there is a config file (most starts have none: ~7 ms)

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: invalid YAML: {exc}".splitlines()[0]) from None
    projects = data.get("projects") if isinstance(data, dict) else None
    if not isinstance(projects, list):
        raise ConfigurationError(f"{path}: expected `projects:`, a list of projects with their `backends`")
    return projects


async def apply(ctx: ServerContext) -> None:
    projects = read(ctx)
    if not projects:
        return
    path = ctx.settings.server_dir / "config.yml"
    async with ctx.db.session() as session:
        admin = await session.scalar(select(UserModel).where(UserModel.name == "admin"))
        for i, entry in enumerate(projects):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not name:
                raise ConfigurationError(f"{path}: projects[{i}].name is required")
            if not isinstance(name, str) or not PROJECT_NAME.fullmatch(name):
                raise ConfigurationError(f"{path}: projects[{i}].name: {name!r} is not a valid project name "
                                         "(lowercase letters, digits, - and _, up to 50)")
            project = await session.scalar(select(ProjectModel).where(ProjectModel.name == name))
            if project is None:
                project = await create_project(session=session, encryptor=ctx.encryptor, owner=admin, name=name,
                                               with_local_backend=False)
            for j, config in enumerate(entry.get("backends") or []):
                where = f"{path}: projects[{i}].backends[{j}]"
                try:
                    await _apply_backend(ctx, session, project, config)
                except DstackError as exc:
                    field = f".{exc.field}" if exc.field else ""
                    raise ConfigurationError(f"{where}{field}: {exc}") from None


async def _apply_backend(ctx: ServerContext, session: Any, project: ProjectModel, config: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise ConfigurationError("expected a mapping of the backend's fields, with `type`")
    existing = next((b for b in project.backends if b.type == config.get("type")), None)
    if existing is None:
        admin = await session.scalar(select(UserModel).where(UserModel.name == "admin"))
        await add_backend(session=session, encryptor=ctx.encryptor, project=project, config=config, user=admin)
        return
    wanted = parse_backend_config(config).model_dump()
    if json.dumps(load_config(ctx.encryptor, existing), sort_keys=True) != json.dumps(wanted, sort_keys=True):
        await update_backend(session=session, encryptor=ctx.encryptor, project=project, config=config)
