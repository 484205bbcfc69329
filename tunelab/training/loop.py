"""The one training loop. Every method runs through it; methods customise it only through
the seam in `tunelab.methods.base` (apply, param_groups, on_step, save).

train(config) -> TrainResult:
  load base -> data (training/plan.py) -> evaluate base ("before") -> method.apply -> AdamW +
  schedule -> optimizer steps (gradient accumulation, clipping, eval, checkpoints) -> save
  adapter -> evaluate ("after") -> summary.json

`run_steps(state, plan, cfg, files, reporter, callbacks)` is the step loop alone: a small
`TrainingState` (model, optimizer, schedule, method, accelerator, step) and the caller's
`Callbacks`, so a benchmark or a search drives the very loop `train` runs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from tunelab.data.mixture import format_report
from tunelab.io import append_jsonl, atomic_write_json
from tunelab.methods import MethodContext, get_method
from tunelab.methods.base import Method, count_parameters
from tunelab.models import load_model_and_tokenizer
from tunelab.models.chain import provenance, resolve_init_from
from tunelab.models.tokenizer_report import train_data_figures
from tunelab.run import RunFiles, save_adapter, write_run_config
from tunelab.run_config import RunConfig, load_config
from tunelab.training.budget import Seen
from tunelab.training.checkpoint import resume_latest, save_checkpoint
from tunelab.training.distributed import (
    make_accelerator,
    rewrap,
    seed_everything,
    step_scale,
    trainable_flags,
)
from tunelab.training.divergence import all_ranks, check_finite
from tunelab.training.evaluation import generation_summary, periodic_eval_loss, split_scores
from tunelab.training.fastpath import fast_paths
from tunelab.training.fsdp import gather_checkpoint, is_sharded, plain_copy, unshard_into
from tunelab.training.loss import labelled_tokens, mean_token_loss, token_loss_sum
from tunelab.training.memory import PeakMemory
from tunelab.training.optimizer import build_optimizer
from tunelab.training.phases import PhaseTimer
from tunelab.training.plan import Plan, plan_data
from tunelab.training.preflight import (
    check_method,
    check_output,
    check_resume,
    check_settings,
)
from tunelab.training.progress import BarReporter, Reporter, SilentReporter
from tunelab.training.schedules import build_scheduler
from tunelab.training.shared_eval import SharedScores
from tunelab.training.tasks import evaluate_extras, extras_summary
from tunelab.training.trackers import report_run
from tunelab.training.vocab import VocabRun, check_corpus


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


class StopTraining(Exception):
    """Raised by a caller's `on_step` hook to end training early (e.g. a wall-time budget):
    the loop stops after that step, then saves and evaluates as usual. Any other exception
    from the hook aborts the run (tests use one to simulate a kill)."""


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def train(
    config: RunConfig | dict | str | Path,
    *,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    on_step=None,
    on_eval=None,
    shared_before: Path | None = None,
) -> TrainResult:
    """Fine-tune as `config` says; write the run directory; return its summary. A finished
    run in `output_dir` is returned as is with `resume`, replaced only with `overwrite`.
    `shared_before`: a folder of the base model's per-task scores shared between runs
    (training/shared_eval.py; compare's variants use it)."""
    cfg = load_config(config, overrides)
    files = RunFiles(Path(cfg.output_dir))
    check_settings(cfg)
    check_corpus(cfg)
    resolve_init_from(cfg)  # model.init_from: checked and pinned (path, hash) before any work
    if resume:
        check_resume(files, cfg)
    if resume and files.summary.exists():  # finished (a kill may have left checkpoints)
        shutil.rmtree(files.checkpoints, ignore_errors=True)
        return TrainResult(files.root, files.read_summary())
    check_output(files, resume=resume, overwrite=overwrite)
    timer = PhaseTimer()  # wall time per phase, for summary.json's `phases`
    seed_everything(cfg.train.seed)
    accelerator = make_accelerator(cfg)
    if not accelerator.is_main_process:
        reporter = SilentReporter()
    reporter = reporter or (BarReporter() if cfg.train.progress else SilentReporter())
    with timer.phase("model_load"):
        model, tokenizer = load_model_and_tokenizer(cfg.model)
    method = get_method(cfg.method.name)
    check_method(method, model, cfg)
    vocab = VocabRun(cfg, files.vocab)  # model.extend_vocab: new tokens before the data
    with timer.phase("data"):  # the new tokens are chosen from the training text
        model, tokenizer = vocab.extend(model, tokenizer, resume=resume)
    rank, world = accelerator.process_index, accelerator.num_processes
    with timer.phase("data"):  # bad data fails before writes
        plan = plan_data(cfg, tokenizer, method, model, rank, world)
    main = accelerator.is_main_process  # only the main process writes the run directory
    if main and not resume:
        files.reset()
    if main:
        write_run_config(files, cfg)
        vocab.write(tokenizer)
        if plan.extras.mixture:  # multi-task: the resolved mixture, shown before training
            atomic_write_json(files.mixture, plan.extras.mixture)
            reporter.message(format_report(plan.extras.mixture))
    model.to(accelerator.device)

    timer.start("eval_before")
    before_extras = files.read_before_extras()  # per-task metrics and forgetting probes
    if before_extras is None and cfg.eval.before and main:
        shared = SharedScores(shared_before) if shared_before else None
        before_extras = evaluate_extras(
            model, tokenizer, plan.extras, cfg, files, tag="before", shared=shared,
            say=reporter.message,
        )  # fmt: skip
        atomic_write_json(files.before_extras, before_extras)
    before = files.read_before()
    if before is None and cfg.eval.before and main:
        before = split_scores(model, tokenizer, plan, cfg, files, before_extras, tag="before",
                              say=reporter.message)  # fmt: skip
        atomic_write_json(files.before, before)
    timer.stop("eval_before")

    timer.start("method_setup")
    context = MethodContext(
        calibration_batches=lambda: _on_device(
            plan.batches(cfg, 0, tokenizer.pad_token_id), accelerator
        ),
        loss_fn=lambda m, b: _calibration_loss(m, b, plan.packing),
        total_steps=plan.total_steps,
        tokenizer=tokenizer,
    )
    seed_everything(cfg.train.seed)
    model = method.apply(model, cfg.method, context)
    vocab.attach(model)  # only the new rows of the embeddings train beside the method
    model.to(accelerator.device)
    if cfg.train.gradient_checkpointing:
        _enable_checkpointing(model)
    trainable, total = count_parameters(model)
    trainable -= vocab.frozen_elements()
    lr = cfg.train.lr or method.default_lr
    optimizer = build_optimizer(
        vocab.param_groups(method.param_groups(model, cfg.method, lr, cfg.train.weight_decay), lr),
        lr,
        cfg.train.betas,
    )
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    plain = plain_copy(model, accelerator)  # FSDP: the main process's whole model, to save
    model, optimizer = accelerator.prepare(model, optimizer)

    start_step = 0
    if resume:  # the newest checkpoint that verifies; a damaged one is named and skipped
        start_step = resume_latest(
            files.checkpoints, accelerator.unwrap_model(model), optimizer, scheduler,
            reporter.message,
        )  # fmt: skip
    timer.stop("method_setup")

    with timer.phase("train_steps"), fast_paths(model, packing=plan.packing):
        state = TrainingState(model, optimizer, scheduler, method, accelerator, start_step)
        stats = run_steps(state, plan, cfg, files, reporter, Callbacks(on_step, on_eval))
    timer.move("train_steps", "checkpoints", stats["checkpoint_seconds"])
    timer.move("train_steps", "eval_periodic", stats["eval_seconds"])
    model = unshard_into(plain, model, accelerator)  # FSDP: gathered by every process
    vocab.detach()
    summary: dict[str, Any] = {}
    if main:
        with timer.phase("checkpoints"):
            save_adapter(method, model, cfg, files, extra=vocab.save_rows)
        with timer.phase("eval_after"):
            after_extras = evaluate_extras(model, tokenizer, plan.extras, cfg, files, tag="after")
            after = split_scores(model, tokenizer, plan, cfg, files, after_extras, tag="after")
        summary = _summary(
            cfg, method, trainable, total, stats, before or {}, after, plan, files, accelerator
        )
        summary.update(extras_summary(before_extras, after_extras, plan.extras))
        summary["init_from"] = provenance(cfg.model)  # None: started from the plain base
        with timer.phase("report"):
            summary["generation"] = generation_summary(cfg, files)  # None: nothing generated
            summary["tokenizer"] = train_data_figures(
                tokenizer, plan.train_examples, cfg.data.max_length
            )
        summary["extend_vocab"] = vocab.summary()  # None: no extension
        summary["phases"] = timer.summary()  # wall time per phase, up to this write
        atomic_write_json(files.summary, summary)
        shutil.rmtree(files.checkpoints, ignore_errors=True)
        report_run(files, cfg)  # train.report_to: TensorBoard, MLflow
    accelerator.wait_for_everyone()
    return TrainResult(files.root, summary)


def _calibration_loss(model, batch, packing: bool) -> torch.Tensor:
    """The mean token loss as training computes it: packed rows attend per example (stock
    attention would build an (L, L) block mask per row, slow and large on a CPU)."""
    with fast_paths(model, packing=packing):
        return mean_token_loss(model, batch)


def _on_device(batches, accelerator):
    for batch in batches:
        yield {k: v.to(accelerator.device) for k, v in batch.items()}


def _enable_checkpointing(model) -> None:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(target, "enable_input_require_grads"):
        target.enable_input_require_grads()


@dataclass
class TrainingState:
    """What the step loop trains: the prepared model, its optimizer and schedule, the method
    (for its per-step hook) and the accelerator; `step` counts optimizer steps done, resumed
    ones included."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    method: Method
    accelerator: Accelerator
    step: int = 0


@dataclass
class Callbacks:
    """The caller's hooks. `on_step(step)` after every optimizer step (raise StopTraining to
    end the run there, keeping what trained); `on_eval(step, eval_loss)` after each periodic
    evaluation (e.g. a search's pruner; its exceptions end the run)."""

    on_step: Callable[[int], None] | None = None
    on_eval: Callable[[int, float], None] | None = None


def run_steps(
    state: TrainingState,
    plan: Plan,
    cfg: RunConfig,
    files: RunFiles,
    reporter: Reporter,
    callbacks: Callbacks | None = None,
) -> dict[str, Any]:
    """The optimizer-step loop from `state.step` to `plan.total_steps`. Returns timing and
    throughput statistics."""
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    method, accelerator = state.method, state.accelerator
    callbacks = callbacks or Callbacks()
    on_step, on_eval, start_step = callbacks.on_step, callbacks.on_eval, state.step
    total_steps, device = plan.total_steps, accelerator.device
    seen = Seen()  # examples and tokens of every window taken, resumed steps' too
    windows = plan.windows(cfg, plan.pad_id, start_step, seen)
    reporter.start(f"{cfg.method.name} on {cfg.model.name}", total_steps, completed=start_step)
    model.train()
    memory = PeakMemory.start(device)  # the steps' peak, not the model load's
    seen_tokens, train_seconds, log_loss, log_tokens, last_loss = 0, 0.0, 0.0, 0, float("nan")
    eval_seconds = checkpoint_seconds = 0.0  # spent inside the loop on eval and checkpoints
    started = time.perf_counter()
    done = start_step
    for step in range(start_step, total_steps):
        window = next(windows, None)
        if window is None:  # the example or token budget is spent
            break
        flags = trainable_flags(model)
        method.on_step(accelerator.unwrap_model(model), cfg.method, step, total_steps)
        model = state.model = rewrap(model, flags, accelerator)  # the trainable set changed
        n_labelled, scale = step_scale(sum(labelled_tokens(b) for b in window), accelerator)
        window_loss = 0.0
        for batch in window:
            batch = {k: v.to(device) for k, v in batch.items()}
            with accelerator.autocast():
                loss_sum, _ = token_loss_sum(model, batch)
            accelerator.backward(loss_sum * scale)
            window_loss += float(loss_sum.detach())
            seen_tokens += real_tokens(batch)
        grad_norm = None
        if cfg.train.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm
            )
        window_loss = all_ranks(window_loss, accelerator)  # every process's share
        check_finite(step + 1, window_loss, grad_norm, cfg, files)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log_loss += window_loss
        log_tokens += n_labelled
        last_loss = window_loss / n_labelled
        done = state.step = step + 1
        elapsed = time.perf_counter() - started
        speed = seen_tokens / max(elapsed, 1e-9)
        reporter.update(done, {"loss": last_loss, "tokens_per_second": speed})
        main = accelerator.is_main_process  # only the main process writes
        if main and (done % cfg.train.log_every == 0 or done == total_steps):
            loss = log_loss / max(log_tokens, 1)
            lr = scheduler.get_last_lr()[0]
            record = {"step": done, "loss": loss, "lr": lr, "tokens_per_second": speed,
                      "examples_seen": seen.examples}  # fmt: skip
            append_jsonl(files.metrics, record)
            log_loss, log_tokens = 0.0, 0
        sharded = is_sharded(model)  # FSDP: every process takes part in eval and checkpoints
        if (main or sharded) and _due(cfg.train.eval_every, done, total_steps):
            eval_started = time.perf_counter()
            eval_loss = periodic_eval_loss(model, plan, device)
            eval_seconds += time.perf_counter() - eval_started
            model.train()
            if main:
                append_jsonl(files.metrics, {"step": done, "eval_loss": eval_loss})
            if main and on_eval is not None:  # e.g. a search's pruner; exceptions end the run
                on_eval(done, eval_loss)
        if (main or sharded) and _due(cfg.train.save_every, done, total_steps):
            save_started = time.perf_counter()
            gathered = gather_checkpoint(model, optimizer)  # None unless sharded
            if main:
                save_checkpoint(files.checkpoints, done, accelerator.unwrap_model(model),
                                optimizer, scheduler, {"seen_tokens": seen_tokens},
                                gathered)  # fmt: skip
            checkpoint_seconds += time.perf_counter() - save_started
        if on_step is not None:
            try:
                on_step(done)
            except StopTraining:  # the caller's budget is spent: keep what trained so far
                break
    train_seconds = time.perf_counter() - started
    reporter.finish()
    seen_tokens = int(all_ranks(seen_tokens, accelerator))  # every process's
    return {"train_seconds": train_seconds, "seen_tokens": seen_tokens, "steps": done,
            "final_loss": last_loss, "examples_seen": seen.examples,
            "tokens_seen": seen.tokens, "peak_memory_mb": memory.peak_mb(),
            "eval_seconds": eval_seconds, "checkpoint_seconds": checkpoint_seconds}  # fmt: skip


def _due(every: int | None, done: int, total: int) -> bool:
    """Whether a periodic evaluation or checkpoint falls after step `done` (not the last)."""
    return bool(every) and done % every == 0 and done < total


def _summary(cfg, method, trainable, total, stats, before, after, plan, files, accelerator) -> dict:
    return {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / max(total, 1),
        "steps": stats["steps"],
        "train_seconds": stats["train_seconds"],
        "train_tokens_per_second": stats["seen_tokens"] / max(stats["train_seconds"], 1e-9),
        "peak_memory_mb": stats["peak_memory_mb"],  # of the training steps only
        "final_train_loss": stats["final_loss"],
        "examples_seen": stats["examples_seen"],  # every process's, resumed steps' too
        "tokens_seen": stats["tokens_seen"],  # non-padding input tokens
        "packing": plan.packing,
        "train_examples": len(plan.train_items),
        "eval_examples": len(plan.eval_examples),
        "adapter_bytes": files.adapter_bytes(),
        "lr": cfg.train.lr or method.default_lr,
        "device": str(accelerator.device),
        "before": before,
        "after": after,
    }
