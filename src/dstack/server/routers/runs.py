from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from dstack.core.runs import Artifact, LogPage, Run, RunMetrics, RunPlan, RunSpec
from dstack.server.deps import Ctx, CurrentUser, ProjectReader, ProjectRefReader, ProjectUser, Session
from dstack.server.schemas import ERROR_RESPONSES, StopRunRequest, SubmitRunRequest
from dstack.server.services import logs as logs_svc
from dstack.server.services import repos as repos_svc
from dstack.server.services import run_listing as listing
from dstack.server.services import runs as svc

CodeHash = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="sha256 of the archive")]
router = APIRouter(prefix="/api/projects/{project_name}", tags=["runs"], responses=ERROR_RESPONSES)


@router.put("/code/{code_hash}", status_code=204)
async def upload_code(code_hash: CodeHash, request: Request, project: ProjectUser, session: Session) -> Response:
    await repos_svc.upload_code(session=session, project=project, code_hash=code_hash, data=await request.body())
    return Response(status_code=204)


@router.head("/code/{code_hash}")
async def code_exists(code_hash: CodeHash, project: ProjectReader, session: Session) -> Response:
    found = await repos_svc.code_exists(session=session, project=project, code_hash=code_hash)
    return Response(status_code=200 if found else 404, media_type="application/json")


@router.post("/runs/plan")
async def plan(body: RunSpec, project: ProjectReader, user: CurrentUser, ctx: Ctx) -> RunPlan:
    return await svc.get_plan(ctx=ctx, project=project, user=user, run_spec=body)


@router.post("/runs", status_code=201, response_model=Run)
async def submit(body: SubmitRunRequest, project: ProjectUser, user: CurrentUser, session: Session,
                 ctx: Ctx) -> Response:
    run = await svc.submit_run(session=session, ctx=ctx, project=project, user=user, run_spec=body.run_spec)
    # Written by the model itself: FastAPI would validate the model it was just given again first.
    return Response(ctx.proxy.annotate(run).model_dump_json(), status_code=201, media_type="application/json")


@router.get("/runs", response_model=list[Run])
async def list_runs(project: ProjectRefReader, session: Session, ctx: Ctx, all: bool = False,
                    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                    before: Annotated[str | None, Query(
                        max_length=64, description="runs submitted before this RFC 3339 time (the last "
                        "`submitted_at` of the previous page)", json_schema_extra={"format": "date-time"})] = None,
                    user: Annotated[str | None, Query(max_length=100)] = None,
                    backend: Annotated[str | None, Query(max_length=50)] = None) -> Response:
    """Newest first; a page of `limit`, the next one `before` the last `submitted_at`."""
    body = await listing.list_runs_json(
        session=session, project=project, include_finished=all, limit=limit,
        before=svc.parse_time(before, field="before"), user=user, backend=backend, annotate=ctx.proxy.annotate)
    return Response(body, media_type="application/json")


@router.get("/runs/{run_name}")
async def get_run(run_name: str, project: ProjectReader, session: Session, ctx: Ctx) -> Run:
    return ctx.proxy.annotate(await svc.get_run(session=session, project=project, name=run_name))


@router.post("/runs/{run_name}/stop")
async def stop(run_name: str, body: StopRunRequest, project: ProjectUser, session: Session, ctx: Ctx) -> Run:
    return await svc.stop_run(session=session, ctx=ctx, project=project, name=run_name, abort=body.abort)


@router.get("/runs/{run_name}/attach")
async def attach(run_name: str, project: ProjectUser, session: Session, ctx: Ctx) -> dict[str, object]:
    """The SSH address of the run's instance and its host keys to pin (`dstack attach`)."""
    return await svc.attach_info(session=session, ctx=ctx, project=project, name=run_name)


@router.get("/runs/{run_name}/logs")
async def logs(run_name: str, project: ProjectReader, session: Session, ctx: Ctx,
               next_token: Annotated[str | None, Query(max_length=200)] = None,
               submission: Annotated[int | None, Query(ge=0, le=100_000)] = None,
               job: Annotated[int | None, Query(ge=0, le=1000, description="the node (multi-node tasks)")] = None,
               ) -> LogPage:
    run = await svc.get_run_model(session=session, project=project, name=run_name)
    return await logs_svc.get_logs(ctx=ctx, run=run, next_token=next_token, submission=submission, job_num=job)


@router.get("/runs/{run_name}/metrics")
async def metrics(run_name: str, project: ProjectReader, session: Session, ctx: Ctx) -> RunMetrics:
    """CPU, memory and GPU use of the run's machine: the agent's latest samples (`dstack metrics`)."""
    run = await svc.get_run_model(session=session, project=project, name=run_name)
    return await logs_svc.get_metrics(ctx=ctx, run=run)


@router.get("/runs/{run_name}/artifacts")
async def artifacts(run_name: str, project: ProjectReader, session: Session, ctx: Ctx) -> list[Artifact]:
    run = await svc.get_run_model(session=session, project=project, name=run_name)
    return await logs_svc.list_artifacts(ctx=ctx, run=run)


@router.get("/runs/{run_name}/artifacts/{path:path}")
async def download_artifact(run_name: str, path: str, project: ProjectReader, session: Session,
                            ctx: Ctx) -> StreamingResponse:
    run = await svc.get_run_model(session=session, project=project, name=run_name)
    chunks = logs_svc.open_artifact(ctx=ctx, run=run, path=path)
    filename = path.rsplit("/", 1)[-1].replace('"', "")
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})
