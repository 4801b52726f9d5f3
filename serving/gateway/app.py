"""Build the gateway app. `create_app(cfg, engine_urls)` is the only way to make one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.config import ServingConfig
from serving.engines.process import engine_auth_headers
from serving.errors import BadRequest, ServingError
from serving.gateway.admin import admin, ops
from serving.gateway.exports import exports
from serving.gateway.feedback import router as feedback_router
from serving.gateway.refusals import count_error
from serving.gateway.responses import router as responses_router
from serving.gateway.rollouts import rollouts
from serving.gateway.routes import router
from serving.gateway.state import GatewayState
from serving.gateway.usage import usage
from serving.store import Store


def _error_response(exc: ServingError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after_s", None)  # RateLimited, Overloaded
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    headers.update(getattr(exc, "headers", {}))  # BudgetExceeded: X-Should-Retry
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers or None)


def create_app(cfg: ServingConfig, engine_urls: list[str], health_interval_s: float = 2.0) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(cfg.gateway.read_timeout_s, connect=cfg.gateway.connect_timeout_s)
        upstream = (
            cfg.gateway.max_upstream_connections or cfg.gateway.max_in_flight
        ) + 16  # admission waits, not aiohttp
        limits = httpx.Limits(max_connections=cfg.gateway.max_in_flight + 16, max_keepalive_connections=64)
        session_timeout = aiohttp.ClientTimeout(
            sock_connect=cfg.gateway.connect_timeout_s, sock_read=cfg.gateway.read_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=upstream, limit_per_host=0)
        engine_auth = engine_auth_headers()  # LORAPLANE_ENGINE_API_KEY, on every engine call
        async with (
            httpx.AsyncClient(timeout=timeout, limits=limits, headers=engine_auth) as client,
            aiohttp.ClientSession(
                timeout=session_timeout,
                connector=connector,
                auto_decompress=False,
                read_bufsize=2**20,
                headers=engine_auth,
            ) as session,
        ):
            store = await asyncio.to_thread(Store.open, cfg)  # StoreUnavailable names the URL
            state = GatewayState(cfg, engine_urls, client, session, store)
            app.state.gateway = state
            await state.control.start()
            state.grading.start()
            await state.pool.check_health()  # engines that are not up yet get no traffic
            health = asyncio.create_task(state.pool.health_loop(health_interval_s))
            poll = asyncio.create_task(state.control.poll_loop())
            evaluator = None
            if cfg.rollouts.evaluator:  # one replica at a time decides (a lease in the store)
                run = state.evaluator.run(lambda: state.control.snapshot, state.control.refresh)
                evaluator = asyncio.create_task(run)
            try:
                yield
            finally:
                health.cancel()
                poll.cancel()
                if evaluator is not None:
                    evaluator.cancel()
                    await asyncio.to_thread(state.evaluator.release)
                await state.grading.stop()
                await state.shadow.close()  # mirrors in flight are cancelled (their rows are not needed)
                await state.control.stop()  # writes what the request log still holds
                store.close()
                await state.limiter.close()
                await state.budgets.close()
                await state.cache.close()

    app = FastAPI(title="loraplane gateway", lifespan=lifespan)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        count_error(request, exc.status)
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        count_error(request, exc.status_code)  # unknown paths (404), wrong methods (405)
        body = BadRequest(str(exc.detail)).body()  # OpenAI's shape, type invalid_request_error
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_error(request, 400)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        body = BadRequest(f"{param or 'request'}: {first['msg']}", param=param or None).body()
        return JSONResponse(body, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        count_error(request, 500)
        body = ServingError(f"internal gateway error: {type(exc).__name__}").body()
        return JSONResponse(body, status_code=500)

    app.include_router(router)
    app.include_router(responses_router)
    app.include_router(feedback_router)
    app.include_router(admin)
    app.include_router(rollouts)
    app.include_router(usage)
    app.include_router(exports)
    app.include_router(ops)
    return app
