"""The bucket for agents on SSH fleet hosts (services/agent_storage.py). Not part of the public
API: only agents call it, through the server's SSH tunnels."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from dstack.server.deps import Ctx, Session, request_token
from dstack.server.services import agent_storage as svc

router = APIRouter(prefix="/api/agent", include_in_schema=False)


async def _authorized(request: Request, session: Session, key: str, *, write: bool):  # noqa: ANN202
    instance = await svc.instance_for_token(session=session, token=request_token(request))
    await svc.check_access(session=session, instance=instance, key=key, write=write)
    return instance


@router.get("/storage/objects/{key:path}")
async def get_object(key: str, request: Request, session: Session, ctx: Ctx) -> Response:
    instance = await _authorized(request, session, key, write=False)
    data = await asyncio.to_thread(svc.project_bucket(ctx.settings, instance.fleet.project.name).get, key)
    return Response(status_code=404) if data is None else Response(data, media_type="application/octet-stream")


@router.head("/storage/objects/{key:path}")
async def head_object(key: str, request: Request, session: Session, ctx: Ctx) -> Response:
    instance = await _authorized(request, session, key, write=False)
    size = await asyncio.to_thread(svc.project_bucket(ctx.settings, instance.fleet.project.name).size, key)
    return Response(status_code=404) if size is None else Response(headers={"x-object-size": str(size)})


@router.put("/storage/objects/{key:path}", status_code=204)
async def put_object(key: str, request: Request, session: Session, ctx: Ctx) -> Response:
    instance = await _authorized(request, session, key, write=True)
    data = await request.body()  # at most MAX_CODE_BODY (http_guard)
    await asyncio.to_thread(svc.project_bucket(ctx.settings, instance.fleet.project.name).put, key, data)
    return Response(status_code=204)


@router.delete("/storage/objects/{key:path}", status_code=204)
async def delete_object(key: str, request: Request, session: Session, ctx: Ctx) -> Response:
    instance = await _authorized(request, session, key, write=True)
    await asyncio.to_thread(svc.project_bucket(ctx.settings, instance.fleet.project.name).delete, key)
    return Response(status_code=204)


@router.get("/storage/list")
async def list_objects(request: Request, session: Session, ctx: Ctx,
                       prefix: Annotated[str, Query(max_length=1000)],
                       start_after: Annotated[str | None, Query(max_length=1000)] = None,
                       limit: Annotated[int | None, Query(ge=1, le=10000)] = None) -> list[str]:
    instance = await _authorized(request, session, svc.list_access_prefix(prefix), write=False)
    storage = svc.project_bucket(ctx.settings, instance.fleet.project.name)
    return await asyncio.to_thread(storage.list, prefix, start_after=start_after, limit=limit)


@router.get("/secrets/{job_id}")
async def job_secrets(job_id: str, request: Request, session: Session, ctx: Ctx) -> dict[str, str]:
    """The secrets of a job this instance runs (never through the bucket)."""
    instance = await svc.instance_for_token(session=session, token=request_token(request))
    return await svc.job_secrets(session=session, encryptor=ctx.encryptor, instance=instance, job_id=job_id)
