"""Background workers of one server process. Several processes may share one PostgreSQL:
jobs are claimed with compare-and-set updates, so no two replicas act on a job at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from dstack.server.context import ServerContext

logger = logging.getLogger("dstack.server.workers")


async def run_loop(
    name: str, ctx: ServerContext, wake: asyncio.Event, step: Callable[[ServerContext], Awaitable[None]],
    interval: float | None = None,
) -> None:
    while True:
        wake.clear()
        try:
            await step(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s step failed; retrying", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=min(interval or ctx.settings.worker_interval,
                                                            ctx.settings.worker_interval))


def start_workers(ctx: ServerContext) -> list[asyncio.Task[None]]:
    from dstack.server.workers.fleets import process_fleets_once
    from dstack.server.workers.reconciler import reconcile_once
    from dstack.server.workers.scheduler import schedule_once
    from dstack.server.workers.volumes import process_volumes_once

    return [
        asyncio.create_task(run_loop("scheduler", ctx, ctx.scheduler_wake, schedule_once)),
        asyncio.create_task(run_loop("reconciler", ctx, ctx.reconciler_wake, reconcile_once)),
        asyncio.create_task(run_loop("fleets", ctx, ctx.fleets_wake, process_fleets_once)),
        asyncio.create_task(run_loop("volumes", ctx, ctx.volumes_wake, process_volumes_once)),
        asyncio.create_task(run_loop("proxy", ctx, ctx.proxy.wake, ctx.proxy.refresh, interval=0.5)),
    ]
