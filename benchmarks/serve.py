"""`tunelab serve` under load, against the server a competent user writes in an afternoon.

    python benchmarks/serve.py --runs runs/demo-compare [--clients 8] [--seconds 20] [--rounds 2]
                               [--max-tokens 32] [--workloads one,uniform,skewed,distinct]
    python benchmarks/serve.py --engine-only embedded:smollm2-135m   # CPU cost of batching
    python benchmarks/serve.py --engine-mixed runs/demo-compare      # mixed batches vs turns

Both servers run at once, each in its own process, on the same runs, and every workload is driven
on one and then the other (the order alternating over `--rounds`, so that a slower spell of a
shared host falls on both): `tunelab serve` (one worker, continuous mixed-adapter batches) and the
reference (FastAPI + transformers `generate` with a `TextIteratorStreamer`, one model per run, one
request at a time under a lock). Each workload keeps `--clients` streaming clients busy for
`--seconds`, each sending chat requests one after another (its last one then finishes; a fixed
number of requests per client instead left a tail in which a few slow answers ran nearly alone,
which measured the tail, not 8 clients), no two with the same prompt (`prompt_for`; greedy,
`max_tokens` fixed, `no_repeat_ngram_size=3` so answers run long) over one kept-alive connection,
as the `openai` client does (`httpx.stream` per request builds a client each time: ~60 CPU ms, 50
of them its default TLS context, which on two shared cores the load generator took from the server
under test, the faster server the more):

  one       every request to the first adapter
  uniform   requests cycle over all adapters
  skewed    70 % to the first adapter, the rest spread over the others
  distinct  client i always asks model i (base and the adapters, in turn)

Printed per server and workload: output tokens/s (all clients together), p50/p95 request latency,
p50 time to first token, and output tokens per CPU second of the server process (on a shared
machine the wall-clock figures move with other load; CPU time much less) and the CPU seconds the
clients themselves used (`clients_cpu_s`, taken from the same cores), and the share of the
machine's CPU time stolen by other guests meanwhile (`stolen_share`); for tunelab also what the
engine did (decoding forwards, rows per forward, prefills); then tunelab / reference ratios of
both, each from the tokens, wall and CPU seconds summed over the rounds. Last, the per-token CPU
cost of an unmerged LoRA as the server decodes it (a row of a mixed batch) against the same LoRA
merged into the weights decoded by the same loop, and as a served view (lean LoRA forward) and
PEFT's own model against the merged one through `generate` (greedy decoding of one prompt, one
thread, median of `--repeats`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = ["Give the record as JSON: name Ada, age 36.", "Write one sentence about rivers.",
           "List three colours.", "What is 12 times 7?"]  # fmt: skip
NAMES = ["Ada", "Bongani", "Chen", "Dara", "Emeka", "Farah", "Gus", "Hana"]
TOPICS = ["rivers", "mountains", "bread", "winter", "trains", "music", "bees", "the sea"]
THINGS = ["colours", "fruits", "animals", "tools", "cities", "birds", "metals", "games"]


def prompt_for(client: int, number: int, clients: int) -> str:
    """The prompt of request `number` of `client`: the four kinds of PROMPTS in turn (clients
    start at different kinds), their words changed per client and round of four, so that no two
    requests of 8 clients share a prompt up to 30 requests each (a repeated prompt would be
    served from tunelab's prompt-prefix cache nearly whole; real traffic rarely repeats)."""
    kind, slot = (client + number) % 4, client + clients * (number // 4)
    other = (slot + slot // 8) % 8  # from the ninth round on, a second subject
    if kind == 0:
        return f"Give the record as JSON: name {NAMES[slot % 8]}, age {20 + slot}."
    if kind == 1:
        pair = f" and {TOPICS[other]}" if slot >= 8 else ""
        return f"Write one sentence about {TOPICS[slot % 8]}{pair}."
    if kind == 2:
        pair = f" and three {THINGS[other]}" if slot >= 8 else ""
        return f"List three {THINGS[slot % 8]}{pair}."
    return f"What is {slot + 3} times 7?"


def reference_app(runs_dir: Path):
    """FastAPI + transformers generate, one model per run (and the base), one request at a
    time under a lock, streamed with a TextIteratorStreamer."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import TextIteratorStreamer

    from tunelab.config import DataConfig
    from tunelab.data.templates import render_prompt
    from tunelab.evaluate.generation import generate_batch, stop_token_ids
    from tunelab.methods.prompt_cache import is_prompt_learning
    from tunelab.models import load_model_and_tokenizer
    from tunelab.run import load_run, read_run_config
    from tunelab.serve.catalog import discover
    from tunelab.serve.server import plan_runs
    from tunelab.serve.threads import apart

    runs = discover([runs_dir])

    def load_all() -> dict:
        models = {"base": load_model_and_tokenizer(plan_runs([runs_dir], {}, None).base)}
        return models | {name: load_run(path) for name, path in runs.items()}

    # loaded in a thread that ends, as tunelab serve loads: a main thread that kept libgomp's
    # pool would halve the speed of every request's generate thread (`tunelab.serve.threads`)
    models = apart(load_all)
    datas = {"base": DataConfig()} | {n: read_run_config(p).data for n, p in runs.items()}
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        if not body:
            return {}
        model, tokenizer = models[body["model"]]
        text = render_prompt(body["messages"][-1]["content"], tokenizer, datas[body["model"]])
        batch = tokenizer([text], add_special_tokens=False, return_tensors="pt")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop_ids = stop_token_ids(model, tokenizer)
        options = dict(max_new_tokens=body["max_tokens"], do_sample=False, streamer=streamer,
                       no_repeat_ngram_size=body.get("no_repeat_ngram_size", 0))  # fmt: skip
        produced = {}

        def run():
            with lock, torch.inference_mode():
                out = generate_batch(model, dict(batch), options, stop_ids, stop_ids[0],
                                      is_prompt_learning(model))  # fmt: skip
            new = out[0, batch["input_ids"].shape[1] :].tolist()
            produced["tokens"] = len([t for t in new if t not in stop_ids])

        worker = threading.Thread(target=run, daemon=True)
        worker.start()

        def events():
            for piece in streamer:
                chunk = {"choices": [{"delta": {"content": piece}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            worker.join()
            usage = {"completion_tokens": produced.get("tokens", 0)}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def one_request(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_tokens, "no_repeat_ngram_size": 3,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens}


def model_for(workload: str, names: list[str], client: int, number: int) -> str:
    """The model `client` asks in its request `number` (the same on every server)."""
    adapters = [name for name in names if name != "base"]
    if workload == "one":
        return adapters[0]
    if workload == "uniform":
        return adapters[(client + number) % len(adapters)]
    if workload == "skewed":
        pick = random.Random(client * 1_000_003 + number)
        return adapters[0] if pick.random() < 0.7 else pick.choice(adapters[1:])
    return names[client % len(names)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(url: str, workload: str, names: list[str], args, pid: int) -> dict:
    results: list[dict] = []
    start, cpu, mine = time.perf_counter(), cpu_seconds(pid), cpu_seconds(os.getpid())

    def client(index: int) -> None:
        with httpx.Client() as connection:  # one kept-alive connection per client, as openai's
            number = 0
            while time.perf_counter() - start < args.seconds:
                model = model_for(workload, names, index, number)
                prompt = prompt_for(index, number, args.clients)
                results.append(one_request(connection, url, model, prompt, args.max_tokens))
                number += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    clients_cpu = cpu_seconds(os.getpid()) - mine
    latencies = sorted(r["latency"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu, "tokens": tokens,
            "requests": len(results), "cpu_s": cpu,
            "p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "ttft_p50": statistics.median(r["ttft"] for r in results), "wall": wall,
            "clients_cpu_s": clients_cpu}  # fmt: skip


def start_server(command: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=5)
                return process
            except httpx.TransportError:
                time.sleep(0.5)
        raise RuntimeError(f"server on port {port} did not start")
    except BaseException:  # not started, or the benchmark stopped meanwhile
        process.kill()
        process.wait()
        raise


def engine_stats(url: str) -> dict:
    return httpx.get(f"{url}/tunelab/stats", timeout=30).json()


def describe_stats(before: dict, after: dict, wall: float) -> str:
    """What the engine did between two /tunelab/stats readings `wall` seconds apart (idle: the
    rest of that time; the engine's own idle count also holds the wait before the first job)."""
    keys = ("steps", "step_rows", "step_runs", "prefills", "prefill_rows", "classic",
            "classic_rows", "finished")  # fmt: skip
    done = {key: after.get(key, 0) - before.get(key, 0) for key in keys}
    rows = done["step_rows"] / done["steps"] if done["steps"] else 0.0
    runs = done["step_runs"] / done["steps"] if done["steps"] else 0.0
    forwards = (done["steps"] + done["prefills"]) / done["finished"] if done["finished"] else 0.0
    joined = done["prefill_rows"] / done["prefills"] if done["prefills"] else 0.0
    seconds = {key: after.get(key, 0.0) - before.get(key, 0.0)
               for key in ("step_s", "prefill_s", "classic_s")}  # fmt: skip
    seconds["idle_s"] = max(0.0, wall - sum(seconds.values()))
    return (
        f"{done['steps']} decoding forwards, {rows:.2f} rows of {runs:.2f} runs each; "
        f"{done['prefills']} prefills, "
        f"{joined:.2f} rows each; {done['classic']} generate() batches of "
        f"{done['classic_rows']} requests; {forwards:.2f} continuous forwards per request\n"
        f"  worker wall s: steps {seconds['step_s']:.2f}, prefills {seconds['prefill_s']:.2f}, "
        f"generate {seconds['classic_s']:.2f}, idle {seconds['idle_s']:.2f}"
    )


def warm(url: str, names: list[str]) -> None:
    with httpx.Client() as connection:
        for name in names:
            one_request(connection, url, name, PROMPTS[0], 4)


def run_to_end(model, tokenizer, jobs: list, mixer=None, deltas=None) -> None:
    """Decode `jobs` in one continuous batch (`RunningBatch`; on `mixer`'s view with the rows'
    `deltas`), all joining at once, until every one has finished."""
    from tunelab.evaluate.modes import inference
    from tunelab.serve.batch import RunningBatch, Stats
    from tunelab.serve.engine import Wordlike

    batch = RunningBatch(model, tokenizer, Wordlike(tokenizer), Stats(), mixer)
    with inference(model):
        batch.join(jobs, deltas)
        while len(batch):
            batch.step()


def merged_overhead(run: Path, repeats: int, tokens: int) -> dict[str, float]:
    """CPU s/token of one LoRA run, greedy, one prompt, one torch thread, each the median of
    `repeats`, interleaved (CPU time, so that other load on the machine barely moves it):

    - `served`: as `tunelab serve` decodes it — a row of a mixed running batch over the base
      (`Mixer`, the LoRA as that row's term) — against `merged`: the same LoRA merged into the
      weights, decoded by the same loop (a running batch of the merged model);
    - `view` (a served view, lean LoRA forward) and `peft` (PEFT's own model) against
      `merged_generate`: the three through `generate`, as `tunelab generate` decodes."""
    import tempfile

    from tunelab.config import DataConfig
    from tunelab.data.templates import render_prompt
    from tunelab.evaluate import generate
    from tunelab.evaluate.generation import encode_prompts
    from tunelab.export.merge import merge_run
    from tunelab.models import load_model_and_tokenizer
    from tunelab.run import load_run, read_run_config
    from tunelab.serve.adapters import AdapterSet
    from tunelab.serve.engine import Job
    from tunelab.serve.mixed import Mixer, row_delta

    torch.set_num_threads(1)
    served = AdapterSet.from_runs({"lora": run})
    peft_model, _ = load_run(run)
    with tempfile.TemporaryDirectory() as folder:
        merge_run(run, Path(folder) / "merged")
        config = read_run_config(run).model.model_copy(update={"name": f"{folder}/merged"})
        merged, tokenizer = load_model_and_tokenizer(config)
    text = render_prompt(PROMPTS[1], tokenizer, DataConfig())
    ids = encode_prompts(tokenizer, [text])[0]
    force = {"min_new_tokens": tokens}
    mixers = {"served": Mixer(served.base), "merged": Mixer(merged)}  # 1 row: packs unused
    delta = row_delta(served.model, "lora", served.base)
    assert delta is not None and mixers["served"].accept(delta), "not a mixable LoRA run"
    deltas = {"served": [delta], "merged": [None]}

    def running(label: str) -> None:
        job = Job("lora", ids, tokens, emit=lambda event: None, decoding=dict(force))
        run_to_end(mixers[label].model, tokenizer, [job], mixers[label], deltas[label])

    def through_generate(model) -> None:
        generate(model, tokenizer, [text], max_new_tokens=tokens, batch_size=1, **force)

    ways = {"served": lambda: running("served"), "merged": lambda: running("merged"),
            "view": lambda: through_generate(served.model),
            "peft": lambda: through_generate(peft_model),
            "merged_generate": lambda: through_generate(merged)}  # fmt: skip
    timings = {label: [] for label in ways}
    for _ in range(repeats):
        for label, way in ways.items():
            start = time.process_time()
            way()
            timings[label].append((time.process_time() - start) / tokens)
    return {label: statistics.median(values) for label, values in timings.items()}


def engine_cpu(model: str, prompts: int, tokens: int) -> dict[str, float]:
    """CPU seconds for the same prompts and `tokens` new tokens each on one thread: one prompt
    at a time through `generate`, as one left-padded `generate` batch (the engine's classic
    path), and as one continuous batch (`RunningBatch`, every prompt joining at once): what
    batching saves, measured in process time so that other load on a shared machine barely
    moves it."""
    from tunelab.config import DataConfig
    from tunelab.data.templates import render_prompt
    from tunelab.evaluate import generate
    from tunelab.evaluate.generation import encode_prompts
    from tunelab.serve.adapters import AdapterSet
    from tunelab.serve.engine import Job, decode

    torch.set_num_threads(1)
    served = AdapterSet(model)
    tokenizer = served.tokenizer
    texts = [render_prompt(PROMPTS[i % len(PROMPTS)], tokenizer, DataConfig())
             for i in range(prompts)]  # fmt: skip
    force = {"min_new_tokens": tokens}
    ids = encode_prompts(tokenizer, texts)
    start = time.process_time()
    for text in texts:
        generate(served.base, tokenizer, [text], max_new_tokens=tokens, batch_size=1, **force)
    cost = {"one at a time": time.process_time() - start}
    jobs = lambda: [Job("base", row, tokens, emit=lambda event: None, decoding=dict(force))  # noqa: E731
                    for row in ids]  # fmt: skip
    start = time.process_time()
    decode(served.base, tokenizer, jobs())
    cost["generate batch"] = time.process_time() - start
    start = time.process_time()
    run_to_end(served.base, tokenizer, jobs())
    cost["continuous batch"] = time.process_time() - start
    return cost


def engine_mixed(runs_dir: Path, prompts: int, tokens: int, repeats: int) -> dict[str, dict]:
    """CPU seconds per generated token for `prompts` chat prompts spread evenly over the runs
    under `runs_dir`, all submitted at once to the engine (no HTTP), one thread: decoded in one
    mixed batch (`Scheduler(mix=True)`) and in batches of one run each taking turns
    (`mix=False`, as before mixed batches); the better of `repeats` interleaved tries of each,
    with what the engine did."""
    from tunelab.data.templates import render_prompt
    from tunelab.evaluate.generation import encode_prompts
    from tunelab.serve.catalog import discover
    from tunelab.serve.server import load_adapters, plan_runs

    torch.set_num_threads(1)
    names = list(discover([runs_dir]))
    adapters = load_adapters(plan_runs([runs_dir], {}, None))
    asks = [names[i % len(names)] for i in range(prompts)]
    texts = [render_prompt(PROMPTS[i % len(PROMPTS)], adapters.tokenizer, adapters.runs[name].data)
             for i, name in enumerate(asks)]  # fmt: skip
    ids = encode_prompts(adapters.tokenizer, texts)
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for label, mix in (("turns", False), ("mixed", True)):
            figures = _engine_once(adapters, asks, ids, tokens, mix)
            if label not in best or figures["cpu_s_per_token"] < best[label]["cpu_s_per_token"]:
                best[label] = figures
    return best


def _engine_once(adapters, asks: list[str], ids: list[list[int]], tokens: int, mix: bool) -> dict:
    from tunelab.serve.batch import Stats
    from tunelab.serve.engine import Job, Scheduler

    scheduler = Scheduler(adapters, max_batch=8, window=0.2, mix=mix)
    done = threading.Semaphore(0)

    def emit(event: dict) -> None:
        if "done" in event:
            done.release()

    def run(length: int) -> tuple[float, list]:
        jobs = [Job(name, row, length, emit=emit,
                    decoding={**adapters.decoding(name), "no_repeat_ngram_size": 3})
                for name, row in zip(asks, ids, strict=True)]  # fmt: skip
        start = time.process_time()
        for job in jobs:
            scheduler.submit(job)
        for _ in jobs:
            done.acquire()
        return time.process_time() - start, jobs

    run(1)  # warm: the mixed view and each run's deltas are built once per server
    scheduler.stats = Stats()
    cost, jobs = run(tokens)
    scheduler.close()
    made = sum(len(job.tokens) for job in jobs)
    return {"cpu_s_per_token": cost / made, "tokens": made, **scheduler.stats.summary()}


def stop(signum: int, frame) -> None:
    """SIGTERM: leave through the `finally` that terminates both servers."""
    raise SystemExit(128 + signum)


def start_both(args) -> dict[str, tuple[str, subprocess.Popen]]:
    """Both servers, each in its own process and idle while the other is driven:
    {label: (url, process)}."""
    from tunelab.serve.server import free_port

    servers = {}
    try:
        for label in ("tunelab", "reference"):
            port = free_port()
            command = [sys.executable, "-m", "tunelab.cli", "serve", "--runs", str(args.runs),
                       "--port", str(port), "--max-tokens", str(args.max_tokens)]  # fmt: skip
            if label == "reference":
                command = [sys.executable, __file__, "--runs", str(args.runs),
                           "--reference-port", str(port)]  # fmt: skip
            servers[label] = (f"http://127.0.0.1:{port}", start_server(command, port))
    except BaseException:
        for _, process in servers.values():
            process.kill()
        raise
    return servers


def compare(servers: dict, names: list[str], args) -> dict[tuple[str, str], dict]:
    """Every workload on both servers back to back, `--rounds` times, the order alternating
    (tunelab first in odd rounds), so that a slower spell of a shared host falls on both;
    {(server, workload): figures summed over the rounds}. Prints every side as it ends, with
    the share of the machine's CPU the hypervisor gave to other guests meanwhile."""
    from sides import Clock  # benchmarks/ is on sys.path when run as a script

    parts: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for workload in args.workloads.split(","):
            order = ["tunelab", "reference"] if round_ % 2 == 0 else ["reference", "tunelab"]
            for label in order:
                url, process = servers[label]
                before = engine_stats(url) if label == "tunelab" else None
                clock = Clock()
                figures = drive(url, workload, names, args, process.pid)
                clock.read()
                figures["stolen_share"] = clock.stolen
                parts.setdefault((label, workload), []).append(figures)
                shown = {key: round(value, 3) for key, value in figures.items()}
                print(label, workload, f"round {round_ + 1}", json.dumps(shown), flush=True)
                if before is not None:
                    print(
                        "  engine:",
                        describe_stats(before, engine_stats(url), figures["wall"]),
                        flush=True,
                    )
    return {key: pooled(runs) for key, runs in parts.items()}


def pooled(runs: list[dict]) -> dict:
    """One side's rounds as one: tokens over wall and over CPU seconds summed."""
    wall = sum(run["wall"] for run in runs)
    tokens = sum(run["tokens"] for run in runs)
    cpu = sum(run["cpu_s"] for run in runs)
    return {"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo-compare")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="each client asks again and again for this long (its last request then finishes)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workloads", default="one,uniform,skewed,distinct")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="times every workload runs on both servers (order alternating)",
    )
    parser.add_argument("--reference-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine-only", metavar="MODEL",
                        help="only the CPU cost of batching on MODEL (no servers)")  # fmt: skip
    parser.add_argument("--engine-mixed", metavar="RUNS", type=Path,
                        help="only the engine's CPU cost per token for --clients prompts "
                             "over the runs under RUNS, mixed batches vs turns")  # fmt: skip
    args = parser.parse_args(argv)
    if args.engine_mixed:
        costs = engine_mixed(args.engine_mixed, args.clients, args.max_tokens, args.repeats)
        for label, figures in costs.items():
            rows, runs = figures["mean_rows_per_step"], figures["mean_runs_per_step"]
            print(f"{label}: {1000 * figures['cpu_s_per_token']:.1f} CPU ms/token "
                  f"({figures['tokens']} tokens), {figures['steps']} decoding forwards of "
                  f"{rows:.2f} rows of {runs:.2f} runs, {figures['prefills']} prefills, "
                  f"{figures['classic']} generate() batches")  # fmt: skip
        return
    if args.engine_only:
        cost = engine_cpu(args.engine_only, args.clients, args.max_tokens)
        single = cost["one at a time"]
        figures = [f"{label} {s:.2f} ({single / s:.2f}x less)" for label, s in cost.items()]
        print(f"{args.clients} prompts x {args.max_tokens} tokens, 1 thread, CPU s: ", end="")
        print(", ".join(figures))
        return
    from tunelab.serve.catalog import discover

    if args.reference_port:  # this process is the reference server
        import uvicorn

        app = reference_app(args.runs)
        uvicorn.run(app, host="127.0.0.1", port=args.reference_port, log_level="warning")
        return
    runs = discover([args.runs])
    names = ["base", *runs]
    signal.signal(signal.SIGTERM, stop)  # so that a terminated benchmark stops its servers too
    servers = start_both(args)
    try:
        for url, _ in servers.values():
            warm(url, names)
        products = engine_stats(servers["tunelab"][0]).get("products") or {}
        for part, kinds in products.items():  # measured by the server at start
            print(f"tunelab products ({part}, rows: kind):", json.dumps(kinds), flush=True)
        table = compare(servers, names, args)
    finally:
        for _, process in servers.values():
            process.terminate()
            process.wait(30)
    for workload in args.workloads.split(","):
        ours, theirs = table["tunelab", workload], table["reference", workload]
        print(
            f"{workload}: tunelab/reference output tokens/s = "
            f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x; output tokens per server "
            f"CPU second = {ours['tokens_per_cpu_s'] / theirs['tokens_per_cpu_s']:.2f}x"
        )
    lora = next((path for name, path in runs.items() if name.startswith("lora")), None)
    if lora:
        cost = merged_overhead(lora, args.repeats, args.max_tokens)
        over = lambda label, base: (  # noqa: E731
            f"{cost[label] * 1000:.1f} ({100 * (cost[label] / cost[base] - 1):+.1f} %)"
        )
        print(f"LoRA per token, CPU ms (1 thread): as served (a mixed batch's row) "
              f"{over('served', 'merged')} over merged in the same loop "
              f"{cost['merged'] * 1000:.1f}; through generate: a served view "
              f"{over('view', 'merged_generate')}, PEFT's forward "
              f"{over('peft', 'merged_generate')} over merged "
              f"{cost['merged_generate'] * 1000:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
