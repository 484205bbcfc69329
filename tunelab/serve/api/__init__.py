"""The HTTP app: OpenAI-compatible routes, admin routes, and the web page."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tunelab.serve.api import admin, completions, errors, models, web
from tunelab.serve.api.state import ServerState


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app serving `state`; closing the app stops its scheduler."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.scheduler.close()

    app = FastAPI(title="tunelab serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state
    errors.install(app)
    app.include_router(models.router)
    app.include_router(completions.router)
    if state.allow_admin:
        app.include_router(admin.router)
    app.include_router(web.page)
    app.include_router(web.data)
    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    return app


__all__ = ["ServerState", "create_app"]
