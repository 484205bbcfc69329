"""Admin routes (mounted only with --allow-admin): load a run under a name, unload a name.

A run is loaded only from inside the folders given with --runs at start (the path is resolved,
links and `..` included, before it is checked), so a client cannot make the server read
anything else. The new view is built while requests go on, in a thread that ends with the build
(`tunelab.serve.threads`); only when it is complete does it replace the name (a reload), so a
failing load (missing folder, another base, a corrupt file) answers 400 with the reason and
disturbs nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends

from tunelab.serve.adapters import BASE
from tunelab.serve.api.errors import APIError
from tunelab.serve.api.schemas import LoadRequest, UnloadRequest
from tunelab.serve.api.state import ServerState, get_state, require_key
from tunelab.serve.catalog import content_hash, is_finished_run, within
from tunelab.serve.threads import apart

router = APIRouter(prefix="/admin", dependencies=[Depends(require_key)])


def resolve_run(run: str, roots: list[Path]) -> Path:
    """The run folder `run` names (absolute, or relative to a --runs folder); 400 if it is
    outside every --runs folder or not a finished run."""
    if not roots:
        raise APIError(400, "admin loads need the server started with --runs DIR", param="run")
    given = Path(run)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = [path for path in candidates if within(path, roots)]
    if not inside:
        raise APIError(
            400, f"run {run!r} is outside the --runs folders", param="run", code="path_outside_runs"
        )
    for path in inside:
        if is_finished_run(path):
            return path.resolve()
    raise APIError(
        400,
        f"run {run!r}: no finished run there (summary.json, config.yaml and adapter/ are needed)",
        param="run",
        code="not_a_run",
    )


@router.post("/load")
async def load(body: LoadRequest, state: ServerState = Depends(get_state)) -> dict:
    if body.name == BASE:
        raise APIError(400, "the name 'base' is reserved for the base model", param="name")
    run_dir = resolve_run(body.run, state.roots)
    async with state.admin_lock:
        try:
            # to_thread's pool threads live on (and would keep an OpenMP pool beside the
            # worker's); `apart` builds in a thread that ends with the build
            served = await asyncio.to_thread(apart, state.adapters.build, run_dir)
            digest = await asyncio.to_thread(content_hash, run_dir)
        except Exception as error:  # a corrupt file is as much the client's problem as a path
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise APIError(
                400, f"could not load {run_dir}: {message}", param="run", code="load_failed"
            ) from None
        reloaded = body.name in state.adapters.runs
        state.adapters.put(body.name, served)
        state.hashes[body.name] = digest
    return {
        "name": body.name,
        "root": str(run_dir),
        "content_hash": digest,
        "status": "reloaded" if reloaded else "loaded",
    }


@router.post("/unload")
async def unload(body: UnloadRequest, state: ServerState = Depends(get_state)) -> dict:
    async with state.admin_lock:
        if body.name not in state.adapters.runs:
            raise APIError(
                404, f"no adapter named {body.name!r}", param="name", code="model_not_found"
            )
        state.adapters.remove(body.name)
        state.hashes.pop(body.name, None)
    return {"name": body.name, "status": "unloaded"}
