"""Prompt tuning: The Power of Scale for Parameter-Efficient Prompt Tuning (Lester et al. 2021),
https://arxiv.org/abs/2104.08691.

A few learned embeddings ("virtual tokens") are put in front of every input; the whole model
stays frozen and only these vectors train. Initialising them from real token embeddings (a
task description, or tokens sampled from the vocabulary) trains faster than random vectors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from torch import nn

from tunelab.errors import ConfigError
from tunelab.methods.base import MethodContext, MethodSettings, method_field
from tunelab.methods.peft_base import PeftMethod


class PromptSettings(MethodSettings):
    name: str = "prompt"
    num_virtual_tokens: int = method_field(20, "learned embeddings put before every input", gt=0)
    init_text: str | None = method_field(
        None,
        "start from the embeddings of this text (repeated or cut to num_virtual_tokens); "
        "default: embeddings of tokens sampled from the vocabulary",
        min_length=1,
    )


class PromptTuning(PeftMethod):
    name = "prompt"
    paper = "Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning"
    idea = "freeze the model, learn embeddings of virtual tokens put before every input"
    default_lr = 3e-2
    mergeable = False
    prompt_learning = True
    Config: ClassVar[type[MethodSettings]] = PromptSettings

    def peft_config(self, model: nn.Module, cfg: PromptSettings) -> PromptTuningConfig:
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )

    def apply(self, model: nn.Module, cfg: PromptSettings, ctx: MethodContext) -> nn.Module:
        wrapped = get_peft_model(model, self.peft_config(model, cfg))
        if cfg.init_text is not None:
            if ctx.tokenizer is None:
                raise ConfigError("method.init_text: needs the run's tokenizer to encode the text")
            init_from_text(wrapped, ctx.tokenizer, cfg.init_text)
        return wrapped


def init_from_text(model: nn.Module, tokenizer, text: str) -> None:
    """Copy the token embeddings of `text` into the virtual tokens (V, H), cycling the text's
    tokens when it is shorter than V and cutting it when longer (as PEFT's TEXT init does)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("method.init_text: the text encodes to no tokens")
    embedding = model.prompt_encoder[model.active_adapter].embedding.weight  # (V, H)
    repeats = -(-embedding.shape[0] // len(ids))  # ceil(V / len(ids))
    chosen = torch.tensor((ids * repeats)[: embedding.shape[0]], device=embedding.device)
    with torch.no_grad():
        embedding.copy_(model.word_embeddings(chosen).to(embedding.dtype))  # (V, H)
