"""A team's workflow module whose step calls an HTTP API that takes its token in the URL (Slack's Web API accepts
``?token=``) and fails: the library's error names the URL, token included. Loaded through THREADFLOW_WORKFLOWS
in the bot tests; :func:`refusing_api` is the API (it answers 500 to everything)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from pydantic import BaseModel

from workflows import RetryPolicy, StepContext, Workflow, step

#: The token the team's step uses (not the bot's own: any secret a library may repeat in its error).
STEP_TOKEN = "xoxb-2718281828-3141592653-SeCrEtToKeNvAlUe42"


class Api(BaseModel):
    api: str


class Empty(BaseModel):
    pass


@step(id="list-users", input=Api, output=Empty, retry=RetryPolicy(attempts=1))
async def list_users(ctx: StepContext[Api]) -> Empty:
    async with aiohttp.ClientSession(raise_for_status=True) as client:  # its error names the URL, query and all
        async with client.get(f"{ctx.input.api}/api/users.list", params={"token": STEP_TOKEN}):
            pass
    return Empty()


sync_users = Workflow(id="sync-users", input=Api).then(list_users).commit()


@asynccontextmanager
async def refusing_api() -> AsyncIterator[str]:
    """An HTTP API on 127.0.0.1 that refuses every call with a 500 (like any flaky upstream); yields its base URL."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500, text="upstream broke")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
