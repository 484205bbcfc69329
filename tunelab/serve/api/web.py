"""The web page: static files at / and /static, and the JSON it reads about the served runs.

/tunelab/runs      every served run's card (summary, data, before/after, loss curve)
/tunelab/reports   the comparison and search reports found under --runs; each is served as
                   the file it is (/tunelab/reports/N/report.html), not redrawn
/tunelab/stats     what the engine did so far: decoding forwards, rows and runs per forward,
                   prefills, batches `generate` decoded, requests finished, and the
                   worker's wall seconds in each and waiting (the benchmark prints it)
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from tunelab.serve.api.errors import APIError
from tunelab.serve.api.models import cards
from tunelab.serve.api.state import ServerState, get_state, require_key
from tunelab.serve.catalog import reports, run_card

STATIC = Path(__file__).resolve().parent.parent / "web"

page = APIRouter()
data = APIRouter(prefix="/tunelab", dependencies=[Depends(require_key)])


@page.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@data.get("/runs")
def runs(state: ServerState = Depends(get_state)) -> dict:
    served = []
    for card in cards(state)[1:]:
        run = state.adapters.runs.get(card.id)
        if run is not None:
            served.append({**card.model_dump(), **run_card(run.run_dir)})
    return {
        "base": state.base_name,
        "auth": state.api_key is not None,
        "admin": state.allow_admin,
        "runs": served,
    }


@data.get("/stats")
def stats(state: ServerState = Depends(get_state)) -> dict:
    return state.scheduler.stats.summary()


@data.get("/reports")
def report_list(state: ServerState = Depends(get_state)) -> dict:
    found = reports(state.roots)
    items = []
    for index, path in enumerate(found):
        root = next(r for r in state.roots if path.resolve().is_relative_to(r.resolve()))
        label = path.parent.relative_to(root).as_posix() if path.parent != root else root.name
        items.append({"title": label, "url": f"/tunelab/reports/{index}/report.html"})
    return {"reports": items}


@page.get("/tunelab/reports/{index}/report.html", include_in_schema=False)
def report_file(index: int, request: Request, state: ServerState = Depends(get_state)):
    """The report file itself; with an API key, the key may come as ?key= (a plain link)."""
    if state.api_key is not None and request.query_params.get("key") != state.api_key:
        require_key(request)
    found = reports(state.roots)
    if not 0 <= index < len(found):
        raise APIError(404, f"no report number {index}", code="not_found")
    return FileResponse(found[index], media_type="text/html")
