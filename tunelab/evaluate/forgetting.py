"""Forgetting, measured for every run: perplexity before vs after on general text it was not
trained for.

Two probes, each built once before training and scored on the base model and on the trained one:
  english       the general-English prose of `tunelab.evaluate.probe` (or `eval.forgetting_text`)
  instructions  a general-instruction sample rendered with the run's own prompt template, loss
                on the responses only: does the model still answer ordinary requests as it did?
                Built in below (written for tunelab), or `eval.forgetting_instructions`, any
                instruction/input/output JSON or JSONL file (e.g. shared/data/english/
                instructions), of which a seeded `INSTRUCTION_ROWS` are used.
Both work offline with nothing configured. Perplexity rising after training is forgetting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.batching import make_batches
from tunelab.data.build import cap
from tunelab.data.formats import rows_to_examples
from tunelab.data.readers import read_rows
from tunelab.data.templates import render_prompt
from tunelab.data.tokenize import tokenize_examples
from tunelab.data.types import Example
from tunelab.errors import DataError
from tunelab.evaluate.evaluation import mean_token_loss
from tunelab.evaluate.metrics import perplexity_from_loss
from tunelab.evaluate.probe import PROBE_TEXT, probe_batches

INSTRUCTION_ROWS = 64
INSTRUCTIONS: list[tuple[str, str]] = [
    ("Name three things people often pack for a day at the beach.",
     "Sunscreen, a towel and a bottle of water."),
    ("Rewrite this sentence in the past tense: She walks to the market.",
     "She walked to the market."),
    ("What is the opposite of 'generous'?", "The opposite of 'generous' is 'selfish' or 'mean'."),
    ("Give one tip for sleeping better.",
     "Go to bed at the same time every night, and keep screens out of the bedroom."),
    ("How many minutes are there in three hours?", "There are 180 minutes in three hours."),
    ("Write a short, polite reply declining an invitation to dinner.",
     "Thank you so much for the invitation. I am afraid I cannot make it that evening, "
     "but I hope we can meet another time."),
    ("Explain in one sentence why the sky looks blue.",
     "Air scatters blue sunlight more strongly than red light, so blue reaches our eyes "
     "from every direction."),
    ("Sort these words alphabetically: pear, apple, orange.", "apple, orange, pear"),
    ("Summarise in one sentence: The library will close early on Friday because of repairs "
     "to the heating system. It will reopen as usual on Saturday.",
     "The library closes early on Friday for heating repairs and reopens on Saturday."),
    ("Suggest a name for a small cafe by a river.", "The Riverside Cup."),
    ("Is 17 a prime number?", "Yes, 17 is a prime number: its only divisors are 1 and 17."),
    ("Turn this into a question: The train leaves at nine.", "When does the train leave?"),
    ("List two benefits of walking every day.",
     "It strengthens the heart and it lifts the mood."),
    ("Correct the spelling: I recieved the pakage yesterday.",
     "I received the package yesterday."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("Describe the colour of a ripe banana in a few words.",
     "Bright yellow, sometimes with brown spots."),
]  # fmt: skip


def forgetting_batches(tokenizer: Any, data: DataConfig, cfg: EvalConfig) -> dict[str, list]:
    """{probe name: batches}; empty when `eval.forgetting` is off. Bad files fail here, early."""
    if not cfg.forgetting:
        return {}
    text = PROBE_TEXT if cfg.forgetting_text is None else _read_text(cfg.forgetting_text)
    return {
        "english_perplexity": probe_batches(tokenizer, text),
        "instruction_perplexity": instruction_batches(tokenizer, data, cfg),
    }


def instruction_batches(tokenizer: Any, data: DataConfig, cfg: EvalConfig) -> list[dict]:
    """The instruction sample as padded batches, prompts rendered with the run's template."""
    plain = data.model_copy(update={"format": "instruction", "tasks": None})
    if cfg.forgetting_instructions is None:
        examples = [
            Example(render_prompt(prompt, tokenizer, plain), response)
            for prompt, response in INSTRUCTIONS
        ]
    else:
        rows = cap(read_rows(Path(cfg.forgetting_instructions)), INSTRUCTION_ROWS, data.seed)
        examples = rows_to_examples(rows, tokenizer, plain)
    items = tokenize_examples(examples, tokenizer, plain)
    pad_id = tokenizer.pad_token_id or 0
    return make_batches(
        items, batch_size=cfg.batch_size, tokens_per_batch=None, packing=False, pad_id=pad_id,
        seed=0, epoch=0, shuffle=False,
    )  # fmt: skip


def _read_text(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the forgetting probe text ({exc})") from None
    if not text.strip():
        raise DataError(f"{path}: the forgetting probe text is empty")
    return text


def forgetting_perplexities(model, batches: dict[str, list]) -> dict[str, float]:
    """{probe name: perplexity} of `model` on each probe."""
    return {
        name: perplexity_from_loss(mean_token_loss(model, rows)) for name, rows in batches.items()
    }


def forgetting_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, dict]:
    """Per probe: perplexity before, after, and the change (after - before; > 0 is forgetting)."""
    summary = {}
    for name, value in after.items():
        base = before.get(name)
        change = None if base is None else value - base
        relative = None if base is None or base == 0 else change / base
        summary[name] = {"before": base, "after": value, "change": change,
                         "relative_change": relative}  # fmt: skip
    return summary
