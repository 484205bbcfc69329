"""Request and response bodies, mirroring OpenAI's schema (the subset tunelab serves).

Requests ignore unknown fields (`extra="ignore"`), as OpenAI's clients send fields a server
may not know; the constraints here turn into 400 errors naming the field. Two extra decoding
fields, `repetition_penalty` and `no_repeat_ngram_size`, default to the run's own eval
decoding when absent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Request):
    include_usage: bool = False


class Decoding(Request):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    repetition_penalty: float | None = Field(None, gt=0.0)
    no_repeat_ngram_size: int | None = Field(None, ge=0)

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(stop for stop in stops if stop)


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text (content parts of type text joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionRequest(Decoding):
    prompt: str | list[str]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"
    parent: str | None = None
    root: str | None = None
    method: str | None = None
    trainable_params: int | None = None
    content_hash: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadRequest(Request):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[\w.\-/]+$")
    run: str = Field(..., min_length=1)


class UnloadRequest(Request):
    name: str
