"""Shared parts of the throughput benchmark's sides, and the tunelab side; each side runs in
its own process (`throughput.py --side KIND:NAME`), the reference sides are in references.py.

Every side trains the same model on the same tokenised examples (tunelab's data pipeline builds
them once per side, deterministically), one epoch over steps × batch_size examples, with AdamW,
the same learning rate, a linear decay to 0 over the same number of optimizer steps, gradient
clipping at 1.0 and no weight decay; then every side is scored by `eval_loss` below.

- tunelab:default — the building blocks of `tunelab.training.loop.train` (method.apply, AdamW
  over the method's parameter groups, the schedule, `run_steps` inside `fast_paths`), so what
  is measured is what `tunelab train` runs. Packed rows get a token budget chosen so that one
  epoch is exactly `steps` rows, i.e. as many optimizer steps as the references.
- tunelab:no-shared-prefix — the same without shared-prefix compaction: every example of a
  packed row runs whole, so only the kernel and overhead work differs from the references.

A side prints one JSON line: seconds, tokens, peak RSS, eval loss, parameter counts, and the
work counted by `workcount.count_work` (model tokens, head rows) with the FLOPs that follow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from workcount import count_work, flops, matmul_params, virtual_tokens

from tunelab.config import DataConfig, ModelConfig
from tunelab.data import Tokenized, build_datasets, tokenize_examples
from tunelab.data.batching import pack_rows, padded_batch
from tunelab.data.types import IGNORE
from tunelab.run_config import RunConfig
from tunelab.training.memory import PeakMemory

EVAL_BATCH = 8


@dataclass
class Workload:
    train: list[Tokenized]
    eval: list[Tokenized]

    @property
    def real_tokens(self) -> int:
        return sum(len(item) for item in self.train)


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        train=args.data,
        format="pairs",
        prompt_field=args.prompt_field,
        response_field=args.response_field,
        max_length=args.max_length,
        eval_fraction=0.1,
        seed=args.seed,
        packing=True,
    )


def build_workload(args: argparse.Namespace, tokenizer) -> Workload:
    """steps × batch_size training examples and eval_examples held-out ones, tokenised."""
    cfg = data_config(args)
    datasets = build_datasets(cfg, tokenizer)
    train = tokenize_examples(datasets.train, tokenizer, cfg)
    held_out = tokenize_examples(datasets.eval[: args.eval_examples], tokenizer, cfg)
    if args.fixed_length:
        train = [fixed for item in train if (fixed := cut(item, args.fixed_length)) is not None]
    need = args.steps * args.batch_size
    if len(train) < need:
        sys.exit(f"{args.data}: {len(train)} usable examples, the run needs {need}")
    return Workload(train=train[:need], eval=held_out)


def method_context(args: argparse.Namespace, tokenizer, work: Workload):
    """What `method.apply` reads, the same on every side: importance scores its weights on
    the first training examples (padded batches of batch_size, the mean token loss)."""
    from tunelab.methods import MethodContext
    from tunelab.training.loss import mean_token_loss

    def calibration():
        for start in range(0, len(work.train), args.batch_size):
            yield padded_batch(work.train[start : start + args.batch_size], tokenizer.pad_token_id)

    return MethodContext(calibration, mean_token_loss, total_steps=args.steps, tokenizer=tokenizer)


def cut(item: Tokenized, length: int) -> Tokenized | None:
    """The first `length` tokens of an example at least that long that still has a label."""
    if len(item) < length or all(label == IGNORE for label in item.labels[1:length]):
        return None
    return Tokenized(item.input_ids[:length], item.labels[:length], item.source)


@torch.inference_mode()
def eval_loss(model, items: list[Tokenized], pad_id: int) -> float:
    """Mean token cross-entropy on `items`: right-padded batches with an attention mask and
    plain full logits, computed the same way for both sides."""
    model.eval()
    virtual = virtual_tokens(model)  # prompt tuning: the logits start with V virtual positions
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(items), EVAL_BATCH):
        batch = padded_batch(items[start : start + EVAL_BATCH], pad_id)
        batch = {key: tensor.to(device) for key, tensor in batch.items()}
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        logits = out.logits[:, virtual:-1].float()  # (B, T-1, V)
        targets = batch["labels"][:, 1:]  # (B, T-1)
        total += float(
            F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum")
        )
        count += int((targets != IGNORE).sum())
    return total / max(count, 1)


# ---------------------------------------------------------------- memory


@dataclass
class Trained:
    """What a side hands back after training: the model and how the training went."""

    model: torch.nn.Module
    pad_id: int
    work: Workload
    seconds: float  # wall clock, optimizer creation to the last step
    cpu_seconds: float  # CPU time of the process over the same span (all threads)
    steps: int
    extra: dict
    memory: PeakMemory | None = None  # the training window's peak memory (opened before it)


def figures(trained: Trained) -> dict:
    """The side's JSON record: speed, peak memory of the training window, eval loss."""
    from tunelab.methods.base import count_parameters

    peak = trained.memory.peak_mb()  # first: the evaluation below must not count
    params = matmul_params(trained.model)
    return {
        "seconds": trained.seconds,
        "cpu_seconds": trained.cpu_seconds,
        "steps": trained.steps,
        "tokens": trained.work.real_tokens,
        "examples": len(trained.work.train),
        "peak_rss_mb": peak,
        "eval_loss": eval_loss(trained.model, trained.work.eval, trained.pad_id),
        "trainable_params": count_parameters(trained.model)[0],
        **flops(params, trained.extra),
        **trained.extra,
    }


class Clock:
    """Wall and CPU time since construction, and the share of the machine's CPU time the
    hypervisor gave to other guests meanwhile (`stolen`, after `read`; Linux, else 0): on a
    shared virtual machine a side that ran while much was stolen is slower for no fault of its
    own, so every side reports it."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._synchronize()
        self.wall, self.cpu, self.steal = time.perf_counter(), time.process_time(), _steal()
        self.stolen = 0.0

    def _synchronize(self) -> None:
        if self.device == "cuda":  # kernels still queued belong to the span they were issued in
            torch.cuda.synchronize()

    def read(self) -> tuple[float, float]:
        self._synchronize()
        wall = time.perf_counter() - self.wall
        ticks = os.sysconf("SC_CLK_TCK") * wall * (os.cpu_count() or 1)
        self.stolen = (_steal() - self.steal) / ticks if ticks else 0.0
        return wall, time.process_time() - self.cpu


def training_window(device: str) -> PeakMemory:
    """Open a side's peak-memory window, after handing back to the system what the heap holds
    but no longer uses (glibc keeps freed memory resident): the window then measures the
    training, not what setup left behind. Every side calls this, the same way. (Importance's
    calibration pass, the same on every side, left ~3 GB resident and set that row's peak.)"""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the window opens on what is resident
        pass
    return PeakMemory.start(device)


def _steal() -> int:
    """The machine's stolen CPU time so far, in clock ticks (/proc/stat's 8th field)."""
    try:
        with open("/proc/stat") as stat:
            return int(stat.readline().split()[8])
    except (OSError, IndexError, ValueError):
        return 0


# ---------------------------------------------------------------- tunelab


def tunelab_config(args: argparse.Namespace, tokens_per_batch: int | None) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name=args.model, seed=args.seed),
        data=data_config(args),
        method={"name": args.method},
        train={
            "lr": args.lr,
            "batch_size": args.batch_size,
            "tokens_per_batch": tokens_per_batch,
            "epochs": 1,
            "schedule": "linear",
            "max_grad_norm": 1.0,
            "weight_decay": 0.0,
            "seed": args.seed,
            "precision": args.precision,
            "device": args.device,
            "num_threads": args.threads,
            "progress": False,
            "log_every": 10**6,
            "gradient_checkpointing": args.checkpointing,
        },
        eval={"before": False},
    )


def rows_budget(items: list[Tokenized], steps: int, seed: int) -> int:
    """The smallest token budget per packed row that packs one epoch into <= steps rows."""
    low, high = max(len(item) for item in items), sum(len(item) for item in items)
    while low < high:
        middle = (low + high) // 2
        rows = pack_rows(items, middle, random.Random(f"{seed}:0"))
        low, high = (low, middle) if len(rows) <= steps else (middle + 1, high)
    return low


TUNELAB_VARIANTS = ("default", "no-shared-prefix")


def run_tunelab(args: argparse.Namespace, variant: str) -> Trained:
    from tunelab.methods import get_method
    from tunelab.models import arch_of, load_model_and_tokenizer
    from tunelab.training.distributed import make_accelerator, seed_everything
    from tunelab.training.packed import packs_virtual_tokens
    from tunelab.training.plan import Plan

    cfg = tunelab_config(args, None)
    accelerator = make_accelerator(cfg)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    work = build_workload(args, tokenizer)
    method = get_method(cfg.method.name)
    packing = method.supports_packing and arch_of(model).supports_packing
    if getattr(method, "prompt_learning", False):  # as training/plan.py decides
        packing = packing and packs_virtual_tokens(model)
    if packing:
        cfg = tunelab_config(args, rows_budget(work.train, args.steps, args.seed))
    seed_everything(cfg.train.seed)
    model = method.apply(model, cfg.method, method_context(args, tokenizer, work))
    if cfg.train.gradient_checkpointing:
        from tunelab.training.loop import _enable_checkpointing

        _enable_checkpointing(model)
    plan = Plan(work.train, [], [], packing, args.steps, args.steps, pad_id=tokenizer.pad_token_id)
    share = variant == "default"
    with count_work(model) as counted:
        memory = training_window(args.device)
        clock = Clock(args.device)
        steps = train_steps(model, method, cfg, plan, share, accelerator)
        seconds, cpu = clock.read()
    extra = {"tokens_per_row": cfg.train.tokens_per_batch, **counted.figures(),
             "stolen_share": clock.stolen}  # fmt: skip
    model = accelerator.unwrap_model(model)
    return Trained(model, tokenizer.pad_token_id, work, seconds, cpu, steps, extra, memory)


def train_steps(model, method, cfg: RunConfig, plan, share: bool, accelerator) -> int:
    """AdamW, the schedule and tunelab's step loop inside its fast paths, as `train` runs them
    (the one place this benchmark calls `run_steps`). Returns the optimizer steps taken."""
    from tunelab.run import RunFiles
    from tunelab.training.fastpath import fast_paths
    from tunelab.training.loop import TrainingState, run_steps
    from tunelab.training.optimizer import build_optimizer
    from tunelab.training.progress import SilentReporter
    from tunelab.training.schedules import build_scheduler

    lr = cfg.train.lr
    optimizer = build_optimizer(
        method.param_groups(model, cfg.method, lr, 0.0), lr, cfg.train.betas
    )
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainingState(model, optimizer, scheduler, method, accelerator)
    with tempfile.TemporaryDirectory() as scratch, fast_paths(model, plan.packing, share):
        stats = run_steps(state, plan, cfg, RunFiles(Path(scratch)), SilentReporter())
    return stats["steps"]


def run_side(args: argparse.Namespace) -> None:
    """Entry point of a side's process: print its figures as one JSON line."""
    from references import run_reference

    from tunelab.methods import get_method

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.lr = args.lr or get_method(args.method).default_lr
    kind, name = args.side.split(":")
    trained = run_reference(args, name) if kind == "reference" else run_tunelab(args, name)
    result = {**figures(trained), "lr": args.lr}
    print(json.dumps(result), flush=True)
