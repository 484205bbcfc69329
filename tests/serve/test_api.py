"""`tunelab serve` through the official `openai` client against a real uvicorn server on
127.0.0.1: models, chat and text completions, streaming, every error class, parity with offline
generation for every method, and concurrent requests over several adapters without leakage."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tunelab.data.templates import render_prompt
from tunelab.evaluate import generate
from tunelab.evaluate.decoding import resolve_options
from tunelab.methods import METHODS
from tunelab.run import load_run, read_run_config
from tunelab.serve.api import ServerState, create_app
from tunelab.serve.catalog import content_hash
from tunelab.serve.engine import Job, Scheduler
from tunelab.serve.server import BackgroundServer, load_adapters, plan_runs

RUNS = ["lora_a", "lora_b", *(name for name in METHODS if name != "lora")]  # conftest's runs
PROMPTS = ["reverse: abc", "hi", "reverse: served"]
DIVERSE = {"no_repeat_ngram_size": 1}  # greedy text of random models is otherwise "aaaa" or ""


@pytest.fixture(scope="module")
def server(method_runs):
    root = next(iter(method_runs.values())).parent
    plan = plan_runs([root], {}, None)
    adapters = load_adapters(plan)
    state = ServerState(adapters, Scheduler(adapters, max_batch=8), roots=[root], max_tokens=64)
    with BackgroundServer(create_app(state)) as running:
        running.state = state
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat(client, model: str, prompt: str, **extra) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8,
        extra_body=extra or None,
    )  # fmt: skip
    return reply.choices[0].message.content


def test_models_lists_base_and_every_run(client, method_runs):
    cards = {card.id: card.model_dump() for card in client.models.list().data}
    assert list(cards) == ["base", *sorted(method_runs)]
    card = cards["lora_a"]
    assert card["object"] == "model" and card["parent"] == "base" and card["method"] == "lora"
    assert card["root"] == str(method_runs["lora_a"]) and card["trainable_params"] > 0
    assert card["content_hash"] == content_hash(method_runs["lora_a"])
    assert cards["full"]["trainable_params"] > cards["lora_a"]["trainable_params"]
    assert client.models.retrieve("prompt").method == "prompt"


def test_chat_and_text_completions_shape_and_usage(client, server):
    reply = client.chat.completions.create(
        model="lora_a", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        extra_body=DIVERSE,
    )  # fmt: skip
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    prompt_tokens = len(server.state.adapters.tokenizer(render_prompt(
        "hi", server.state.adapters.tokenizer, server.state.adapters.runs["lora_a"].data
    ))["input_ids"])  # fmt: skip
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 5)
    assert reply.usage.total_tokens == prompt_tokens + 5
    adapters = server.state.adapters
    offline = generate(adapters.base, adapters.tokenizer, ["hello"], max_new_tokens=4, batch_size=1)
    text = client.completions.create(model="base", prompt="hello", max_tokens=4)
    assert text.object == "text_completion" and text.choices[0].text == offline[0]
    assert text.usage.prompt_tokens == len(adapters.tokenizer("hello")["input_ids"])
    assert text.usage.completion_tokens == 4


@pytest.mark.parametrize("name", list(RUNS))
def test_greedy_http_output_is_the_offline_output(client, method_runs, name):
    model, tokenizer = load_run(method_runs[name])  # a fresh load, independent of the server
    cfg = read_run_config(method_runs[name])
    rendered = [render_prompt(prompt, tokenizer, cfg.data) for prompt in PROMPTS]
    diverse = generate(model, tokenizer, rendered, max_new_tokens=8, batch_size=1, **DIVERSE)
    run_decoding = resolve_options(cfg.eval.decoding(), [])  # the run's own, as served
    plain = generate(model, tokenizer, rendered, max_new_tokens=8, batch_size=1, **run_decoding)
    assert [chat(client, name, prompt, **DIVERSE) for prompt in PROMPTS] == diverse
    assert [chat(client, name, prompt) for prompt in PROMPTS] == plain
    raw = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=8, batch_size=1, **DIVERSE)
    text = client.completions.create(
        model=name, prompt=PROMPTS[0], max_tokens=8, extra_body=DIVERSE
    )
    assert text.choices[0].text == raw[0]


def test_streaming_chunks_usage_and_done(client, server):
    whole = chat(client, "prompt", "reverse: abc", **DIVERSE)
    body = {
        "model": "prompt",
        "messages": [{"role": "user", "content": "reverse: abc"}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        **DIVERSE,
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    *content, last, usage = chunks
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == whole
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * len(content)
    assert last["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    text = client.completions.create(model="ia3", prompt="hello", max_tokens=6, extra_body=DIVERSE)
    stream = client.completions.create(
        model="ia3", prompt="hello", max_tokens=6, stream=True, extra_body=DIVERSE
    )
    assert "".join(chunk.choices[0].text for chunk in stream) == text.choices[0].text


def test_stop_strings_and_seeded_sampling(client):
    text = chat(client, "adapter", "hi", **DIVERSE)
    cut = next(i for i in range(1, len(text)) if text[i].isalnum())
    reply = client.chat.completions.create(
        model="adapter", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        stop=[text[cut]], extra_body=DIVERSE,
    )  # fmt: skip
    assert reply.choices[0].message.content == text[:cut].strip()
    assert reply.choices[0].finish_reason == "stop"
    sampled = [
        client.completions.create(
            model="lora_b", prompt="abc", max_tokens=12, temperature=1.5, seed=seed
        )
        .choices[0]
        .text  # fmt: skip
        for seed in (7, 7, 8)
    ]
    assert sampled[0] == sampled[1] != sampled[2]


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value.status_code, caught.value.body


def test_every_client_error_has_openai_shape(client, server):
    def ask(**fields):
        fields = {"model": "lora_a", "messages": [{"role": "user", "content": "hi"}], **fields}
        return lambda: client.chat.completions.create(**fields)

    cases = {
        (404, "model", "model_not_found"): ask(model="nope"),
        (400, "temperature", "invalid_value"): ask(temperature=5),
        (400, "n", "invalid_value"): ask(n=2),
        (400, "messages.0.role", "invalid_value"): ask(messages=[{"role": "robot", "content": ""}]),
        (413, "max_tokens", "max_tokens_exceeded"): ask(max_tokens=65),
        (413, "messages", "context_length_exceeded"): ask(
            messages=[{"role": "user", "content": "x" * 1200}]
        ),
    }
    for (status, param, code), call in cases.items():
        got_status, body = error_of(call)
        assert (got_status, body["param"], body["code"]) == (status, param, code), body
        assert body["type"] == "invalid_request_error" and body["message"]
    broken = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"})  # fmt: skip
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_value"
    unknown = httpx.get(f"{server.url}/v1/nowhere")
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {
        "message", "type", "param", "code"}  # fmt: skip
    extra = client.chat.completions.create(  # unknown fields are ignored
        model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_body={"frobnicate": True},
    )  # fmt: skip
    assert extra.usage.completion_tokens <= 2


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_full_queue_429_disconnect_cancels_and_closing_server_503(method_runs):
    root = next(iter(method_runs.values())).parent
    adapters = load_adapters(plan_runs([], {"lora_a": str(root / "lora_a")}, None))
    scheduler = Scheduler(adapters, max_queue=1)
    state = ServerState(adapters, scheduler, max_tokens=1000)
    long_job = Job("base", [5, 6, 7], 900, emit=lambda event: None)  # base repeats: no EOS
    with BackgroundServer(create_app(state)) as running:
        local = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        scheduler.submit(long_job)
        status, body = error_of(lambda: chat(local, "base", "hi"))
        assert (status, body["type"], body["code"]) == (429, "rate_limit_error", "queue_full")
        long_job.cancelled.set()
        wait_for(lambda: len(scheduler.history) == 1)
        assert long_job.finish_reason == "cancelled" and len(long_job.tokens) < 900

        body = {"model": "base", "prompt": "hello", "max_tokens": 900, "stream": True}
        with httpx.stream("POST", f"{running.url}/v1/completions", json=body) as response:
            next(response.iter_lines())  # one chunk, then hang up
        wait_for(lambda: len(scheduler.history) == 2)
        assert scheduler.history[-1] == ("base", ["cancelled"])

        scheduler.close()
        status, body = error_of(lambda: chat(local, "base", "hi"))
        assert (status, body["code"]) == (503, "shutting_down")


def test_concurrent_requests_over_adapters_match_lone_requests(client, server):
    """18 requests over 6 adapters in flight at once, queued behind a held worker so that the
    batching is certain: eight of the base's, LoRA's and prompt tuning's nine share one mixed
    batch (the ninth follows), each other adapter's three are decoded together, and every
    answer is the lone request's."""
    names = ["base", "lora_a", "prompt", "full", "adapter", "prefix"]
    asks = [(name, prompt) for name in names for prompt in PROMPTS]  # 18 requests
    lone = {ask: chat(client, *ask, **DIVERSE) for ask in asks}
    assert len(set(lone.values())) > len(asks) // 2  # the answers differ, so leaks would show
    scheduler = server.state.scheduler
    held, release = threading.Event(), threading.Event()

    def hold(event: dict) -> None:  # the worker waits inside the gate job's first token
        held.set()
        release.wait(60)

    gate = Job("base", [5, 6, 7], 500, emit=hold)
    scheduler.submit(gate)
    held.wait(60)
    scheduler.history.clear()
    with ThreadPoolExecutor(len(asks)) as pool:
        futures = [pool.submit(chat, client, *ask, **DIVERSE) for ask in asks]
        wait_for(lambda: len(scheduler.pending) == len(asks))
        gate.cancelled.set()
        release.set()
        answers = [future.result() for future in futures]
    assert dict(zip(asks, answers, strict=True)) == lone
    batches = [(adapter, len(reasons)) for adapter, reasons in scheduler.history]
    apart = sorted(batch for batch in batches if batch[0] in ("full", "adapter", "prefix"))
    assert apart == [("adapter", 3), ("full", 3), ("prefix", 3)]
    mixed = sorted((batch for batch in batches if batch not in apart), key=lambda b: -b[1])
    assert mixed[0] == ("base+lora_a+prompt", 8)  # eight rows of three adapters in one batch
    assert sum(rows for _, rows in mixed) == 1 + 9  # the gate before them, the ninth after
    stats = httpx.get(f"{server.url}/tunelab/stats").json()  # what the benchmark reads
    assert stats["prefill_rows"] >= 15 and stats["classic_rows"] >= 3  # prefix: generate
    assert stats["mean_rows_per_step"] > 1
    assert {ask: chat(client, *ask, **DIVERSE) for ask in asks} == lone  # unchanged after


def test_served_run_paths_are_the_run_folders(server, method_runs):
    assert {name: run.run_dir for name, run in server.state.adapters.runs.items()} == {
        name: Path(path) for name, path in method_runs.items()}  # fmt: skip
