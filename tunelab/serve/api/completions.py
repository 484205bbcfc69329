"""POST /v1/chat/completions and /v1/completions, plain or streamed (server-sent events).

The route renders the prompt (chat: the run's template and system prompt; completions: the
text as is, OpenAI's meaning of a completion), checks limits, and hands a `Job` to the
scheduler. The worker thread's events cross into the event loop through an asyncio queue
(`call_soon_threadsafe`), so the worker never waits for a client. A client that goes away
cancels its job: a stream when its response is torn down, a plain request when the server
notices the disconnect while waiting.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tunelab.evaluate.generation import encode_prompts
from tunelab.serve.api.errors import APIError
from tunelab.serve.api.schemas import ChatRequest, CompletionRequest, Decoding
from tunelab.serve.api.state import ServerState, get_state, require_key
from tunelab.serve.engine import Closed, Job, QueueFull
from tunelab.serve.prompts import render_chat

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


@router.post("/chat/completions")
async def chat(body: ChatRequest, request: Request, state: ServerState = Depends(get_state)):
    data = state.data_config(body.model)
    messages = [{"role": _role(m.role), "content": m.text()} for m in body.messages]
    text = render_chat(messages, state.adapters.tokenizer, data)
    return await _complete(body, text, request, state, chat=True)


@router.post("/completions")
async def completions(
    body: CompletionRequest, request: Request, state: ServerState = Depends(get_state)
):
    state.data_config(body.model)  # 404 before anything else
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, "prompt: send one prompt per request", param="prompt")
        prompt = prompt[0]
    return await _complete(body, prompt, request, state, chat=False)


def _role(role: str) -> str:
    return "system" if role == "developer" else role


async def _complete(body: Decoding, text: str, request: Request, state: ServerState, chat: bool):
    job, events = _job(body, text, state)
    try:
        state.scheduler.submit(job)
    except QueueFull as full:
        raise APIError(429, f"The server is busy: {full}; retry later", code="queue_full") from None
    except Closed as closed:
        raise APIError(503, str(closed), code="shutting_down") from None
    reply = Reply(body, chat, state)
    if body.stream:
        first = await events.get()  # an error still gets its status code
        _raise_if_error(first)
        stream = reply.stream(first, events, job)
        return StreamingResponse(stream, media_type="text/event-stream")
    return reply.whole(await _wait_done(events, job, request))


def _job(body: Decoding, text: str, state: ServerState) -> tuple[Job, asyncio.Queue]:
    """The scheduler job for this request (limits checked) and the queue its events reach."""
    prompt_ids = encode_prompts(state.adapters.tokenizer, [text])[0]
    max_tokens = body.max_completion_tokens or body.max_tokens or state.max_tokens
    if max_tokens > state.max_tokens:
        raise APIError(
            413,
            f"max_tokens {max_tokens} is over this server's limit {state.max_tokens}",
            param="max_tokens",
            code="max_tokens_exceeded",
        )
    context = state.context_length
    if context and len(prompt_ids) + max_tokens > context:
        raise APIError(
            413,
            f"The prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) "
            f"is over the model's context of {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    return Job(
        adapter=body.model,
        prompt_ids=prompt_ids,
        max_new_tokens=max_tokens,
        emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
        decoding=_decoding(body, state),
        seed=body.seed,
        stop=body.stops(),
    ), events


def _decoding(body: Decoding, state: ServerState) -> dict:
    """generate() options: the run's eval decoding, overridden by the request's fields.
    No temperature (or 0) is greedy, as the run was evaluated; a temperature samples."""
    options = state.decoding(body.model)
    if body.repetition_penalty is not None:
        options["repetition_penalty"] = body.repetition_penalty
    if body.no_repeat_ngram_size is not None:
        options["no_repeat_ngram_size"] = body.no_repeat_ngram_size
    if options.get("repetition_penalty") == 1.0:  # the plain defaults: nothing to pass on
        del options["repetition_penalty"]
    if options.get("no_repeat_ngram_size") == 0:
        del options["no_repeat_ngram_size"]
    if body.temperature:
        options.update(do_sample=True, temperature=body.temperature, top_p=body.top_p or 1.0)
    return options


def _raise_if_error(event: dict) -> None:
    if "error" in event:
        raise APIError(event["status"], event["error"], param="model")


async def _wait_done(events: asyncio.Queue, job: Job, request: Request) -> dict:
    """The job's final event; cancels the job if the client disconnects meanwhile."""
    while True:
        try:
            event = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                raise APIError(499, "client disconnected") from None
            continue
        _raise_if_error(event)
        if "done" in event:
            return event


class Reply:
    """OpenAI response objects for one request: whole, or as a stream of chunks."""

    def __init__(self, body: Decoding, chat: bool, state: ServerState) -> None:
        self.body, self.chat = body, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, kind: str, choices: list, usage: dict | None = None) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.body.model,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage,
        }

    def _choice(self, text: str, finish: str | None, *, delta: bool, role: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        if not delta:
            message = {"role": "assistant", "content": text}
            return {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        content = {"role": "assistant", "content": text} if role else {"content": text}
        return {
            "index": 0,
            "delta": content if text or role else {},
            "finish_reason": finish,
            "logprobs": None,
        }

    def whole(self, done: dict) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return self._envelope(
            kind, [self._choice(done["done"], _finish(done), delta=False)], _usage(done)
        )

    async def stream(self, first: dict, events: asyncio.Queue, job: Job) -> AsyncIterator[str]:
        """SSE lines: a role chunk (chat), content chunks, a last chunk with finish_reason,
        usage if asked, then [DONE]. Leaving early (client gone) cancels the job."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        try:
            if self.chat:
                yield _sse(self._envelope(kind, [self._choice("", None, delta=True, role=True)]))
            event = first
            while "done" not in event:
                _raise_if_error(event)
                yield _sse(self._envelope(kind, [self._choice(event["delta"], None, delta=True)]))
                event = await events.get()
            yield _sse(self._envelope(kind, [self._choice("", _finish(event), delta=True)]))
            options = self.body.stream_options
            if options and options.include_usage:
                yield _sse(self._envelope(kind, [], _usage(event)))
            yield "data: [DONE]\n\n"
        except APIError as error:  # the model vanished mid-stream (unloaded): say so, in shape
            yield _sse(
                {
                    "error": {
                        "message": error.message,
                        "type": "server_error",
                        "param": None,
                        "code": error.code,
                    }
                }
            )
        finally:
            job.cancelled.set()  # no effect once finished; stops decoding for a gone client


def _finish(done: dict) -> str:
    return "length" if done["finish_reason"] == "length" else "stop"


def _usage(done: dict) -> dict:
    prompt, completion = done["prompt_tokens"], done["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
