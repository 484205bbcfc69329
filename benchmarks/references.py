"""The reference sides of the throughput benchmark: what a competent user of transformers
`Trainer` + PEFT (or trl) would run on the same examples. Each is run in its own process by
throughput.py (`--side reference:NAME`).

- random: `Trainer` + `DataCollatorForSeq2Seq`, each random batch of batch_size examples padded
  to its longest (labels -100 on the prompt and the padding); the documentation's recipe.
- grouped: the same with length grouping (`train_sampling_strategy="group_by_length"`, formerly
  `group_by_length=True`): batches of similar length, so far less padding.
- flat: `Trainer` + `DataCollatorWithFlattening`: each batch of batch_size examples becomes one
  row without padding, position ids restarting at 0 per example; under "sdpa" transformers
  turns the restarts into a block-diagonal mask.
- trl: trl's `SFTTrainer` with `packing=True` (best-fit-decreasing packing, which turns on
  padding-free rows with per-example position ids), one packed row per optimizer step, the row
  length chosen like tunelab's (the smallest that packs one epoch into <= steps rows);
  gradient checkpointing, which SFTConfig turns on by default, is off as on every other side,
  and bf16 (also on by default there) follows `--precision` as on every other side.

All: AdamW (torch's fused kernel: Trainer's default on torch >= 2.8, and what tunelab builds), the
same learning rate, a linear decay to 0 over the run, clipping at 1.0, no weight decay, the method
applied by tunelab's own `method.apply` (for LoRA, DoRA and IA³ that is `get_peft_model` with the
PEFT config tunelab uses; for prompt and prefix tuning it also starts the virtual tokens where
tunelab does, so the eval losses compare). Prompt-style methods put their virtual tokens before
every row, so they cannot be flattened: flat and trl do not apply to them.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from sides import (
    Clock,
    Trained,
    Workload,
    build_workload,
    count_work,
    method_context,
    training_window,
)

from tunelab.data.types import IGNORE


def reference_model(name: str, seed: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models import random_model, resolve_model_dir

    if name.startswith("random:"):
        return random_model(name.removeprefix("random:"), seed)
    folder = resolve_model_dir(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def with_method(model, args: argparse.Namespace, tokenizer, work: Workload):
    """The model with the benchmark's method applied, as on the tunelab side."""
    from tunelab.methods import get_method
    from tunelab.training.distributed import seed_everything

    method = get_method(args.method)
    seed_everything(args.seed)  # the same adapter initialisation as the tunelab side
    return method.apply(model, method.Config(), method_context(args, tokenizer, work))


def training_kwargs(args: argparse.Namespace, scratch: str, batch_size: int) -> dict:
    """The TrainingArguments every reference shares."""
    return dict(
        output_dir=scratch,
        per_device_train_batch_size=batch_size,
        num_train_epochs=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=args.device == "cpu",
        bf16=args.precision == "bf16",
        dataloader_num_workers=0,
        seed=args.seed,
        disable_tqdm=True,
    )


def trainer_for(reference: str, args, model, tokenizer, work: Workload, scratch: str):
    """A transformers Trainer set up as `reference` (random, grouped or flat)."""
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    rows = [{"input_ids": item.input_ids, "labels": item.labels} for item in work.train]
    if reference == "flat":
        collator = DataCollatorWithFlattening()  # position ids restart per example
    else:
        for row in rows:
            row["attention_mask"] = [1] * len(row["input_ids"])
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    strategy = "group_by_length" if reference == "grouped" else "random"
    training = TrainingArguments(
        **training_kwargs(args, scratch, args.batch_size), train_sampling_strategy=strategy
    )
    return Trainer(model=model, args=training, train_dataset=rows, data_collator=collator)


def trl_row_length(dataset, steps: int) -> int:
    """The smallest row length at which trl's BFD packing makes <= steps rows."""
    from trl import pack_dataset

    low, high = max(dataset["length"]), sum(dataset["length"])
    while low < high:
        middle = (low + high) // 2
        rows = len(pack_dataset(dataset.remove_columns("length"), middle, "bfd"))
        low, high = (low, middle) if rows <= steps else (middle + 1, high)
    return low


def trl_trainer(args, model, tokenizer, work: Workload, scratch: str):
    """trl's SFTTrainer with packing, on the already tokenised examples (labels given)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list(
        [{"input_ids": it.input_ids, "labels": it.labels, "length": len(it)} for it in work.train]
    )
    length = trl_row_length(dataset, args.steps)
    config = SFTConfig(
        **training_kwargs(args, scratch, 1),
        max_length=length,
        packing=True,
        packing_strategy="bfd",
        gradient_checkpointing=False,
        logging_steps=10**6,
    )
    dataset = dataset.remove_columns("length")
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)


def run_reference(args: argparse.Namespace, reference: str) -> Trained:
    model, tokenizer = reference_model(args.model, args.seed)
    work = build_workload(args, tokenizer)
    model = with_method(model, args, tokenizer, work)
    with tempfile.TemporaryDirectory() as scratch:
        if reference == "trl":
            trainer = trl_trainer(args, model, tokenizer, work, scratch)
        else:
            trainer = trainer_for(reference, args, model, tokenizer, work, scratch)
        with count_work(trainer.model) as counted:
            memory = training_window(args.device)
            clock = Clock(args.device)
            trainer.train()
            seconds, cpu = clock.read()
    steps = trainer.state.global_step
    figures = {**counted.figures(), "stolen_share": clock.stolen}
    return Trained(model, tokenizer.pad_token_id, work, seconds, cpu, steps, figures, memory)
