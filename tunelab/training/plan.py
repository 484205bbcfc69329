"""What the loop iterates: the tokenised training data of a run, how it is batched (packed or
padded), the gradient-accumulation windows in order (cut where an example or token budget runs
out) and the number of optimizer steps."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tunelab.data import build_datasets, make_batches, tokenize_examples
from tunelab.errors import DataError
from tunelab.models import arch_of
from tunelab.run_config import RunConfig
from tunelab.training.budget import Limits, Seen, take_window
from tunelab.training.packed import packs_virtual_tokens
from tunelab.training.tasks import Extras, plan_extras, plan_tasks


@dataclass
class Plan:
    """What the loop iterates: tokenised data, batching mode and step counts."""

    train_items: list
    eval_batches: list[dict[str, torch.Tensor]]
    eval_examples: list
    packing: bool
    steps_per_epoch: int
    total_steps: int
    rank: int = 0  # this process among `world` data-parallel processes
    world: int = 1
    extras: Extras | None = None  # per-task evaluations and forgetting probes (training/tasks)
    train_examples: list = field(default_factory=list)  # before tokenising (tokenizer report)
    pad_id: int = 0  # the tokenizer's padding id, for padded batches

    def batches(self, cfg: RunConfig, epoch: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
        return make_batches(
            self.train_items,
            batch_size=cfg.train.batch_size,
            tokens_per_batch=tokens_per_batch(cfg),
            packing=self.packing,
            pad_id=pad_id,
            seed=cfg.train.seed,
            epoch=epoch,
        )

    def windows(
        self, cfg: RunConfig, pad_id: int, start_step: int, seen: Seen | None = None
    ) -> Iterator[list[dict]]:
        """Gradient-accumulation windows in order, skipping the first `start_step`; it ends
        where `train.max_examples` / `max_tokens` run out (the last window cut to fit). `seen`
        counts every window's examples and tokens, skipped ones too. With several processes,
        each optimizer step consumes accum x world micro-batches; this process takes every
        world-th of them."""
        seen = seen if seen is not None else Seen()
        limits = Limits(cfg.train.max_examples, cfg.train.max_tokens)
        step, epoch, span = 0, 0, cfg.train.grad_accum * self.world
        while True:
            batches = self.batches(cfg, epoch, pad_id)
            check_enough(batches, span)
            for first in range(0, len(batches) - span + 1, span):
                window = take_window(batches[first : first + span], seen, limits,
                                     cut=self.world == 1)  # fmt: skip
                if not window:
                    return
                if step >= start_step:
                    yield window[self.rank :: self.world]
                step += 1
            epoch += 1


def check_enough(batches: list, span: int) -> list:
    """`batches`, when they fill at least one optimizer step (else no step could be taken)."""
    if len(batches) < span:
        raise DataError(
            f"the training data makes {len(batches)} micro-batches, fewer than one optimizer "
            f"step takes ({span}: train.grad_accum x processes)"
        )
    return batches


def tokens_per_batch(cfg: RunConfig) -> int:
    return cfg.train.tokens_per_batch or max(cfg.train.batch_size * cfg.data.max_length // 2, 2)


def plan_data(cfg: RunConfig, tokenizer, method, model, rank: int = 0, world: int = 1) -> Plan:
    packing = cfg.data.packing and method.supports_packing and arch_of(model).supports_packing
    if getattr(method, "prompt_learning", False):  # virtual tokens pack only with our attention
        # ... and in one process: a packed row runs the base model directly, past the DDP
        # wrapper whose forward readies the gradient all-reduce of the virtual tokens
        packing = packing and packs_virtual_tokens(model) and world == 1
    tasks = None
    if cfg.data.tasks:  # multi-task: a mixture of template-rendered tasks
        datasets, train_items, tasks = plan_tasks(cfg, tokenizer, packing, tokens_per_batch(cfg))
    else:
        datasets = build_datasets(cfg.data, tokenizer)
        train_items = tokenize_examples(datasets.train, tokenizer, cfg.data)
    eval_items = tokenize_examples(datasets.eval, tokenizer, cfg.data) if datasets.eval else []
    pad_id = tokenizer.pad_token_id
    plan = Plan(train_items, [], datasets.eval, packing, 1, 1, rank, world,
                train_examples=datasets.train, pad_id=pad_id)  # fmt: skip
    plan.extras = plan_extras(cfg, tokenizer, tasks)
    plan.eval_batches = make_batches(
        eval_items,
        batch_size=cfg.eval.batch_size,
        tokens_per_batch=tokens_per_batch(cfg),
        packing=packing,
        pad_id=pad_id,
        seed=0,
        epoch=0,
        shuffle=False,
    )
    span = cfg.train.grad_accum * world
    plan.steps_per_epoch = len(check_enough(plan.batches(cfg, 0, pad_id), span)) // span
    plan.total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * plan.steps_per_epoch)
    if cfg.train.max_examples or cfg.train.max_tokens:  # the steps the budget lasts
        walk = itertools.islice(plan.windows(cfg, pad_id, 0), cfg.train.max_steps)
        plan.total_steps = sum(1 for _ in walk)
    return plan
