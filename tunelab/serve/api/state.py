"""What every route shares: the served adapters, the scheduler, the limits and the key.

The routes reach it through `get_state` (a FastAPI dependency reading `app.state.serve`), and
`require_key` guards every route but the static page when the server has an API key.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from tunelab.config import DataConfig
from tunelab.serve.adapters import BASE, AdapterSet
from tunelab.serve.api.errors import APIError
from tunelab.serve.catalog import content_hash
from tunelab.serve.engine import Scheduler


@dataclass
class ServerState:
    adapters: AdapterSet
    scheduler: Scheduler
    roots: list[Path] = field(default_factory=list)  # the --runs folders: admin loads only here
    api_key: str | None = None
    allow_admin: bool = False
    max_tokens: int = 256  # cap on a request's max_tokens (and its default)
    created: int = field(default_factory=lambda: int(time.time()))
    hashes: dict[str, str] = field(default_factory=dict)  # name -> content hash of its adapter
    admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        for name, served in self.adapters.runs.items():
            self.hashes.setdefault(name, content_hash(served.run_dir))

    @property
    def base_name(self) -> str:
        return self.adapters.model_config.name

    def names(self) -> list[str]:
        return [BASE, *self.adapters.runs]

    def data_config(self, name: str) -> DataConfig:
        """How `name` renders prompts; 404 if it is not served."""
        if name == BASE:
            return DataConfig()
        served = self.adapters.runs.get(name)
        if served is None:
            known = ", ".join(self.names())
            raise APIError(
                404,
                f"The model {name!r} does not exist; served: {known}",
                param="model",
                code="model_not_found",
            )
        return served.data

    def decoding(self, name: str) -> dict:
        return self.adapters.decoding(name)

    @property
    def context_length(self) -> int | None:
        return getattr(self.adapters.base.config, "max_position_embeddings", None)


def get_state(request: Request) -> ServerState:
    return request.app.state.serve


def require_key(request: Request) -> None:
    """401 unless the request carries `Authorization: Bearer <key>` (when a key is set)."""
    key = get_state(request).api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise APIError(
            401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
        )
    if not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
