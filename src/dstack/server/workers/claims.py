"""A scheduler pass's claims: a priority level's jobs claimed in one statement (submitted ->
provisioning, a short lease on each), their claims kept alive by one task while they are provisioned,
and what their launches need read in one session."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, update

from dstack.core.runs import JobStatus, RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import JobModel, utcnow
from dstack.server.services.fleets import ANY_TAKEABLE
from dstack.server.services.repo_credentials import credentials_for
from dstack.server.services.repos import get_code
from dstack.server.services.secrets import secret_values
from dstack.server.workers.common import lease_is_free, load_jobs

logger = logging.getLogger("dstack.server.scheduler")


# Built once (see the lease statements in common.py): every job is claimed.
_CLAIM = (update(JobModel)
          .where(JobModel.id.in_(bindparam("row_ids", expanding=True)), JobModel.status == JobStatus.SUBMITTED.value,
                 lease_is_free(JobModel))
          .values(status=JobStatus.PROVISIONING.value, lock_owner=bindparam("owner"), lock_until=bindparam("until"))
          .returning(JobModel.id))
_RENEW = (update(JobModel)
          .where(JobModel.id.in_(bindparam("row_ids", expanding=True)), JobModel.lock_owner == bindparam("owner"))
          .values(lock_until=bindparam("until")))


async def claim_jobs(ctx: ServerContext, job_ids: list[str]) -> list[str]:
    """submitted -> provisioning as one compare-and-set: exactly one replica wins a job. Returns the
    jobs won, in the order asked."""
    now = utcnow()
    async with ctx.db.transaction() as conn:
        won = set((await conn.execute(_CLAIM, {"row_ids": job_ids, "now": now, "owner": ctx.replica_id,
                                              "until": now + timedelta(seconds=ctx.settings.claim_lease)}))
                  .scalars())
    return [job_id for job_id in job_ids if job_id in won]


async def renew_claims(ctx: ServerContext, held: set[str]) -> None:
    """Keep the claims short but alive while this replica provisions (`held`: the jobs not done
    yet): if it dies, a claim runs out within `claim_lease` and the reconciler of any replica
    resolves the job."""
    lease = ctx.settings.claim_lease
    while True:
        await asyncio.sleep(lease / 3)
        if not held:
            continue
        try:
            async with ctx.db.transaction() as conn:
                await conn.execute(_RENEW, {"row_ids": list(held), "owner": ctx.replica_id,
                                            "until": utcnow() + timedelta(seconds=lease)})
        except Exception:
            logger.exception("renewing the claims on jobs %s failed", ", ".join(held))


@dataclass
class ClaimedJob:
    """A claimed job as its level's one read brought it: with its run, the run's project and the
    project's backends (objects shared by the level's jobs: read, never attached to another session),
    its code archives, the project's secrets and the repo's credentials."""
    job: JobModel
    run_spec: RunSpec
    archives: dict[str, bytes]
    secrets: dict[str, str]
    credentials: dict[str, str] | None
    fleet_instances: bool  # whether the project had an instance a job may take (when the level was read)


async def read_claimed(ctx: ServerContext, job_ids: list[str]) -> dict[str, ClaimedJob]:
    """The claimed jobs in one session: one statement for the jobs, then each code archive, each
    project's secrets and each repo's credentials once (a level's jobs often share them)."""
    loaded: dict[str, ClaimedJob] = {}
    codes: dict[tuple[str, str], bytes] = {}
    secrets: dict[str, dict[str, str]] = {}
    credentials: dict[tuple[str, str], dict[str, str] | None] = {}
    fleet_instances: dict[str, bool] = {}
    async with ctx.db.session() as session:
        for job in await load_jobs(session, job_ids):
            project = job.run.project
            run_spec = RunSpec.model_validate_json(job.run.spec)
            for code_hash in (h for h in (run_spec.code_hash, run_spec.files_hash) if h):
                if (project.id, code_hash) not in codes:
                    codes[project.id, code_hash] = await get_code(session=session, project_id=project.id,
                                                                  code_hash=code_hash)
            if project.id not in secrets:
                secrets[project.id] = await secret_values(session=session, encryptor=ctx.encryptor,
                                                          project_id=project.id)
                fleet_instances[project.id] = (await session.execute(
                    ANY_TAKEABLE, {"project_id": project.id})).first() is not None
            repo = run_spec.configuration.repos[0] if run_spec.configuration.repos else None
            if repo and repo.url and (project.id, repo.url) not in credentials:
                credentials[project.id, repo.url] = await credentials_for(
                    session=session, encryptor=ctx.encryptor, project=project, url=repo.url)
            loaded[job.id] = ClaimedJob(
                job=job, run_spec=run_spec,
                archives={h: codes[project.id, h] for h in (run_spec.code_hash, run_spec.files_hash) if h},
                secrets=secrets[project.id],
                credentials=credentials.get((project.id, repo.url)) if repo and repo.url else None,
                fleet_instances=fleet_instances[project.id])
        await session.commit()
    return loaded
