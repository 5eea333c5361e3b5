"""First start: the admin user, project `main` with the local backend, and the CLI config."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dstack.core.errors import ResourceExistsError
from dstack.server.context import ServerContext
from dstack.server.models import UserModel
from dstack.server.services.projects import create_project
from dstack.server.services.users import create_user, hash_token

ADMIN = "admin"
DEFAULT_PROJECT = "main"


async def bootstrap(ctx: ServerContext, *, url: str) -> str | None:
    """Returns the admin token if it was created now (it is shown once), else None."""
    preset = ctx.settings.admin_token
    async with ctx.db.session() as session:
        admin = await session.scalar(select(UserModel).where(UserModel.name == ADMIN))
        if admin is not None:
            if preset and admin.token_hash != hash_token(preset):
                admin.token_hash = hash_token(preset)
                await session.commit()
            return None
        try:
            admin, token = await create_user(session=session, name=ADMIN, global_role="admin", token=preset)
        except (IntegrityError, ResourceExistsError):
            return None  # another replica created it first
        await create_project(session=session, encryptor=ctx.encryptor, owner=admin, name=DEFAULT_PROJECT)
    # The CLI's config (and YAML) only at the first start: a warm start need not import them.
    from dstack.api.config import ProjectConfig, load_config, save_config  # noqa: PLC0415

    config = load_config()
    config.set_project(ProjectConfig(name=DEFAULT_PROJECT, url=url, token=token, default=True))
    save_config(config)
    return token
