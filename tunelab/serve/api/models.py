"""GET /v1/models and /v1/models/{id}: the base and every served adapter, with where it came
from (root: the run folder), its method, trainable parameters and a content hash of its files."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tunelab.serve.adapters import BASE
from tunelab.serve.api.schemas import ModelCard, ModelList
from tunelab.serve.api.state import ServerState, get_state, require_key
from tunelab.serve.catalog import summary_fields

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


def cards(state: ServerState) -> list[ModelCard]:
    base = ModelCard(
        id=BASE, created=state.created, root=state.base_name, method="base", trainable_params=0
    )
    served = []
    for name, run in list(state.adapters.runs.items()):
        facts = summary_fields(run.run_dir)
        served.append(
            ModelCard(
                id=name,
                created=state.created,
                parent=BASE,
                root=str(run.run_dir),
                method=run.method,
                trainable_params=facts["trainable_params"],
                content_hash=state.hashes.get(name),
            )
        )
    return [base, *served]


@router.get("/models")
def list_models(state: ServerState = Depends(get_state)) -> ModelList:
    return ModelList(data=cards(state))


@router.get("/models/{name:path}")
def get_model(name: str, state: ServerState = Depends(get_state)) -> ModelCard:
    state.data_config(name)  # 404 if unknown
    return next(card for card in cards(state) if card.id == name)
