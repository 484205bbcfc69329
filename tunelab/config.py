"""The sections of a run configuration: model, data, train, eval, and the base of every
method's settings. A leaf module (pydantic only): data, models and methods read their section
from here; the whole run config (`RunConfig`, which resolves `method:` to a method's own
settings) and its loading live above them in `tunelab.run_config`.
Unknown keys are errors (`extra="forbid"`), never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from tunelab.evaluate.metrics import METRICS  # light: no torch, nothing of tunelab
from tunelab.task_config import MixtureConfig, RowFilter, TaskConfig, check_tasks


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodSettings(Section):
    """Base of every method's settings: `name` plus the method's own fields (unknown keys fail).
    Each method module subclasses it; `tunelab.methods` picks the subclass by name."""

    name: str


class ExtendVocabConfig(Section):
    """Vocabulary extension (`tunelab.models.vocab`): new tokens learnt from the target-language
    text, their rows initialised from the sub-tokens they replace and trained beside the method."""

    corpus: str = Field(
        "train",
        description="text the new tokens are learnt from: `train` (the run's training "
        "responses, i.e. the target side) or a file (.txt lines, .jsonl/.json/.csv/.tsv rows)",
    )
    new_tokens: int = Field(0, ge=0, description="how many tokens to add; 0: no extension")
    field: str | None = Field(
        None, description="corpus file: the field holding the text (default: text/the only one)"
    )


class ModelConfig(Section):
    name: str = Field(
        "embedded:smollm2-135m",
        description="embedded:smollm2-135m | random:<arch> | local dir | .gguf path | hub id",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype for training (mixed precision: train.precision)"
    )
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    seed: int = Field(0, description="seed for random:<arch> initialisation")
    extend_vocab: ExtendVocabConfig | None = Field(
        None, description="add new tokens learnt from the target language (opt-in)"
    )
    init_from: str | None = Field(
        None,
        description="a finished run directory: start from its weights (its method merged into "
        "its base); `name` may be left out and is then taken from it, else it must match",
    )
    init_from_hash: str | None = Field(
        None,
        description="filled in by train: sha256 of init_from's adapter/; loading refuses a "
        "init_from run whose weights changed since",
    )

    @model_validator(mode="after")
    def _hash_needs_run(self) -> ModelConfig:
        if self.init_from_hash and not self.init_from:
            raise ValueError("init_from_hash without init_from")
        return self


class DataConfig(Section):
    train: str = Field("builtin:reverse", description="file path or builtin:NAME")
    eval: str | None = Field(None, description="file path or builtin:NAME; else eval_fraction")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    format: Literal["text", "pairs", "instruction", "chat"] = "pairs"
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    template: str = Field(
        "auto",
        description="auto (chat template if the tokenizer has one) | chat | plain | alpaca | "
        "a format string with {prompt}",
    )
    system_prompt: str | None = None
    max_length: int = Field(512, gt=1)
    truncate: bool = Field(True, description="false: a row longer than max_length is an error")
    train_on_prompt: bool = Field(False, description="loss on prompt tokens too")
    max_train_examples: int | None = Field(None, gt=0)
    max_eval_examples: int | None = Field(None, gt=0)
    packing: bool = Field(True, description="pack examples into rows with per-example attention")
    builtin_size: int = Field(2000, gt=0, description="rows generated for builtin:NAME data")
    filter: RowFilter | None = Field(
        None,
        description="keep only rows whose numeric field is in range, e.g. {field: score, "
        "min: 0.8} (train and eval files; per task: tasks[].filter)",
    )
    chunk_text: bool = Field(
        False,
        description="plain text (no prompt) longer than max_length: cut into consecutive "
        "max_length-token pieces, every token learned once, instead of truncating",
    )
    # Multi-task runs (tunelab.task_config): the tasks replace train/eval/format above.
    tasks: list[TaskConfig] | None = Field(None, description="multi-task: one entry per task")
    mixture: MixtureConfig = Field(default_factory=MixtureConfig, description="multi-task mixing")

    @model_validator(mode="after")
    def _check_tasks(self) -> DataConfig:
        changed = {name for name, info in type(self).model_fields.items()
                   if info.default is not None and getattr(self, name) != info.default}  # fmt: skip
        changed |= {key for key in ("eval", "filter") if getattr(self, key) is not None}
        check_tasks(self.tasks, self.mixture, changed)
        return self


class TrainConfig(Section):
    lr: float | None = Field(None, gt=0, description="peak learning rate; default: the method's")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = Field(8, gt=0, description="examples per micro-batch (padded mode) ")
    tokens_per_batch: int | None = Field(
        None,
        gt=0,
        description="packed mode: tokens per micro-batch (default batch_size*max_length/2)",
    )
    grad_accum: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    max_examples: int | None = Field(
        None, gt=0, description="stop after this many training examples (overrides epochs; "
        "equal for packed and padded batching; with max_steps, whichever comes first)"
    )  # fmt: skip
    max_tokens: int | None = Field(
        None, gt=0, description="stop after this many training tokens (non-padding, whole "
        "examples; overrides epochs; with max_steps, whichever comes first)"
    )  # fmt: skip
    epochs: float = Field(1.0, gt=0)
    schedule: Literal["constant", "linear", "cosine", "stlr"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    stlr_cut_frac: float = Field(0.1, gt=0, lt=1, description="slanted triangular: rising part")
    stlr_ratio: float = Field(32.0, ge=1, description="slanted triangular: peak/min LR ratio")
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(None, gt=0, description="checkpoint every N optimizer steps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp32; fp16 needs a GPU"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: the GPU if there is one; cuda without a GPU is an error"
    )
    gradient_checkpointing: bool = False
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads")
    progress: bool = True
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="experiment trackers that also get the config, metric curves and summary",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: sqlite store RUN/mlflow.db)"
    )
    mlflow_experiment: str = Field("tunelab", description="MLflow experiment name")

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "compile" in data:
            raise ValueError(REMOVED_COMPILE)
        return data


REMOVED_COMPILE = "removed: it was never applied (training always ran uncompiled); delete the key"


class EvalConfig(Section):
    metrics: list[str] = Field(default_factory=lambda: ["loss", "perplexity"])
    before: bool = Field(True, description="also evaluate the untouched base model")
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0)
    max_examples: int | None = Field(None, gt=0, description="cap for generation metrics")
    repetition_penalty: float = Field(1.0, ge=1.0, description="generation: >1 discourages repeats")
    no_repeat_ngram_size: int = Field(
        0, ge=0, description="generation: never repeat an n-gram (prompt included)"
    )
    repetition_guard: int = Field(
        4,
        ge=0,
        description="generation: never repeat an n-gram of this many tokens within the output "
        "unless the prompt holds it (copying names and numbers stays free); 0: off",
    )
    output_repetition_penalty: float = Field(
        1.2,
        ge=1.0,
        description="generation: penalise tokens the output already used, except those of the "
        "prompt (>1 discourages loops, copying stays free)",
    )
    stop_at_newline: bool | Literal["auto"] = Field(
        "auto",
        description="generation: end an answer at its first newline; auto: when no eval "
        "reference holds a newline",
    )
    do_sample: bool = Field(False, description="generation: sample instead of greedy")
    temperature: float = Field(1.0, gt=0, description="generation: sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="generation: nucleus sampling share")
    sample_seed: int = Field(0, description="generation: seed of the sampling draws")
    bootstrap_resamples: int = Field(
        1000, ge=0, description="resamples for confidence intervals of chrF/chrF++/BLEU; 0: off"
    )
    bootstrap_seed: int = Field(0, description="seed of the bootstrap resampling")
    forgetting: bool = Field(True, description="perplexity before vs after on a general-English "
                             "probe and a general-instruction sample")  # fmt: skip
    forgetting_text: str | None = Field(None, description="text file: the English probe "
                                        "(default: built in)")  # fmt: skip
    forgetting_instructions: str | None = Field(
        None, description="instruction/input/output JSON(L): the sample (default: built in)"
    )

    def decoding(self) -> dict[str, Any]:
        """Options for `generate`, only those that differ from plain greedy; `stop_at_newline`
        may be "auto", which the caller resolves against its references."""
        options: dict[str, Any] = {"repetition_guard": self.repetition_guard}
        if self.output_repetition_penalty != 1.0:
            options["output_repetition_penalty"] = self.output_repetition_penalty
        if self.stop_at_newline:
            options["stop_at_newline"] = self.stop_at_newline
        if self.repetition_penalty != 1.0:
            options["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            options["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.do_sample:
            options.update(
                do_sample=True, temperature=self.temperature, top_p=self.top_p,
                seed=self.sample_seed,
            )  # fmt: skip
        return options

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(sorted(METRICS))}")
        return value
