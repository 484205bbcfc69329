"""Shared plumbing for methods implemented by PEFT: wrap, save in PEFT's own format
(`adapter_config.json` + `adapter_model.safetensors`), load with `PeftModel`, merge."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn

from tunelab.errors import ConfigError, MergeNotSupported
from tunelab.methods.base import Method, MethodContext, MethodSettings
from tunelab.models.arch import arch_of

# PEFT 0.21 calls transformers 5 APIs that warn of their own deprecation on every wrap and, for
# prefix tuning, on every forward (`past_key_values=`): nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
logging.getLogger("transformers.utils.generic").addFilter(
    lambda record: "`past_key_values`/`cache_params` are deprecated" not in record.getMessage()
)

Targets = Literal["all", "attention", "mlp"] | list[str]


def resolve_targets(model: nn.Module, targets: Targets) -> list[str]:
    """Module names for `targets`: a preset from the architecture table, or names as given."""
    if isinstance(targets, list):
        return targets
    spec = arch_of(model)
    chosen = {
        "all": spec.projections,
        "attention": spec.attention_projections,
        "mlp": spec.mlp_projections,
    }[targets]
    return list(dict.fromkeys(chosen))


def check_module_names(model: nn.Module, field: str, names: list[str] | None) -> None:
    """Every name must match a module the way PEFT matches `target_modules` (the whole name or
    its last dotted parts), else a one-line error naming the field and close candidates."""
    if not names:
        return
    modules = [name for name, _ in model.named_modules() if name]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in modules})
    for name in names:
        if not any(m == name or m.endswith(f".{name}") for m in modules):
            raise ConfigError(
                f"method.{field}: no module named {name!r} in this model; "
                f"module names here: {', '.join(leaves[:24])}"
            )


class PeftMethod(Method):
    """A method whose injection, saving and merging PEFT already does well."""

    prompt_learning: ClassVar[bool] = False
    artifact_files: ClassVar[tuple[str, ...]] = ("adapter_config.json", "adapter_model.safetensors")
    module_fields: ClassVar[tuple[str, ...]] = ("target_modules", "feedforward_modules")

    def check(self, model: nn.Module, cfg: MethodSettings) -> None:
        for field in self.module_fields:
            value = getattr(cfg, field, None)
            if isinstance(value, list):
                check_module_names(model, field, value)

    def peft_config(self, model: nn.Module, cfg: MethodSettings) -> PeftConfig:
        raise NotImplementedError

    def apply(self, model: nn.Module, cfg: MethodSettings, ctx: MethodContext) -> nn.Module:
        return get_peft_model(model, self.peft_config(model, cfg))

    def save(self, model: nn.Module, cfg: MethodSettings, directory: Path) -> None:
        # Never the whole embedding: PEFT's "auto" saves it when the vocabulary was resized
        # (model.extend_vocab), 1.3 GB on Gemma 3; the new rows have their own file.
        model.save_pretrained(str(directory), save_embedding_layers=False)

    def load(self, base: nn.Module, cfg: MethodSettings, directory: Path) -> nn.Module:
        return PeftModel.from_pretrained(base, str(directory), is_trainable=False)

    def merge(self, model: nn.Module, cfg: MethodSettings) -> nn.Module:
        if not self.mergeable:
            raise MergeNotSupported(
                f"{self.name}: its trained vectors are extra inputs to attention, not a change "
                "of any weight, so there is nothing to fold into the base; serve it unmerged"
            )
        return model.merge_and_unload()

    def trainable_names(self, model: nn.Module) -> list[str]:
        return [n for n, p in model.named_parameters() if p.requires_grad]


def peft_kwargs(cfg: MethodSettings, *, exclude: set[str] = frozenset()) -> dict[str, Any]:
    return cfg.model_dump(exclude={"name", *exclude})
