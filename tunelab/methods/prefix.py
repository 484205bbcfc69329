"""Prefix-Tuning: Optimizing Continuous Prompts for Generation (Li & Liang 2021),
https://arxiv.org/abs/2101.00190.

Every attention layer gets learned key and value vectors for a few virtual positions in front
of the input, which real tokens attend to; the model stays frozen. Optionally the prefix comes
out of an MLP during training (steadier); afterwards only the resulting keys and values count.

PEFT starts the prefix from N(0, 1) vectors, which on a trained model are far from any keys
and values it ever produced: on SmolLM2-135M and the Xhosa data the dev loss rose from 5.75 to
6.89 over 12 steps at lr 1e-2. Li & Liang (section 7.2) start from the activations of real
words instead; so does tunelab: the keys and values the frozen model computes for `init_text`,
or by default for tokens sampled from the vocabulary. The prefixed model then starts as the
base model reading that text first.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from torch import nn
from transformers.cache_utils import Cache

from tunelab.errors import ConfigError
from tunelab.methods.base import MethodContext, MethodSettings, method_field
from tunelab.methods.peft_base import PeftMethod


class PrefixSettings(MethodSettings):
    name: str = "prefix"
    num_virtual_tokens: int = method_field(
        20, "virtual positions with learned keys and values in every layer", gt=0
    )
    prefix_projection: bool = method_field(
        False, "produce the prefix with a two-layer MLP while training (Li & Liang's reparam.)"
    )
    encoder_hidden_size: int | None = method_field(
        None, "hidden width of that MLP; default: the model's hidden size", gt=0
    )
    init_text: str | None = method_field(
        None,
        "start from the keys and values the model computes for this text (repeated or cut to "
        "num_virtual_tokens); default: for tokens sampled from the vocabulary",
        min_length=1,
    )


class PrefixTuning(PeftMethod):
    name = "prefix"
    paper = "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation"
    idea = "freeze the model, learn keys and values of virtual positions in every layer"
    default_lr = 3e-3
    mergeable = False
    # packs: the packed attention puts the cached prefix before every example of a row
    # (tunelab/training/packed.py, `prefix_tuning_row`)
    prompt_learning = True
    Config: ClassVar[type[MethodSettings]] = PrefixSettings

    def peft_config(self, model: nn.Module, cfg: PrefixSettings) -> PrefixTuningConfig:
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.encoder_hidden_size,
        )

    def apply(self, model: nn.Module, cfg: PrefixSettings, ctx: MethodContext) -> nn.Module:
        wrapped = get_peft_model(model, self.peft_config(model, cfg))
        if cfg.prefix_projection:  # the MLP's output cannot be set directly: PEFT's init
            if cfg.init_text is not None:
                raise ConfigError("method.init_text: not with prefix_projection (an MLP makes it)")
            return wrapped
        if cfg.init_text is None:
            size = model.get_input_embeddings().num_embeddings
            ids = torch.randint(0, size, (cfg.num_virtual_tokens,)).tolist()
        elif ctx.tokenizer is None:
            raise ConfigError("method.init_text: needs the run's tokenizer to encode the text")
        else:
            ids = ctx.tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError("method.init_text: the text encodes to no tokens")
            ids = (ids * -(-cfg.num_virtual_tokens // len(ids)))[: cfg.num_virtual_tokens]
        init_from_tokens(wrapped, ids)
        return wrapped


def init_from_tokens(model: nn.Module, ids: list[int]) -> None:
    """Set the prefix (V virtual positions) to the keys and values the frozen base model
    computes when it reads `ids` (V tokens).

    Where each entry of the prefix table lands in the cache PEFT builds from it depends on the
    architecture (a view and permute, with post-processing for some models), so it is read off
    PEFT itself: the table is filled with its own indices and passed through `get_prompt`.
    """
    weight = model.prompt_encoder[model.active_adapter].embedding.weight  # (V, layers·2·heads·d)
    if weight.numel() >= 2**24 or weight.dtype != torch.float32:
        return  # indices would not be exact in this dtype: keep PEFT's init
    tokens = torch.tensor([ids], device=weight.device)  # (1, V)
    with torch.no_grad(), model.disable_adapter():
        real = cache_tensors(model.get_base_model()(input_ids=tokens, use_cache=True))
    with torch.no_grad():
        saved = weight.detach().clone()
        weight.copy_(torch.arange(weight.numel(), dtype=weight.dtype).view_as(weight))
        slots = cache_tensors(model.get_prompt(batch_size=1))
        if [s.shape for s in slots] != [r.shape for r in real]:
            weight.copy_(saved)  # a layout this code does not know: keep PEFT's init
            return
        flat = torch.cat([s.reshape(-1) for s in slots]).long()
        weight.view(-1)[flat] = torch.cat([r.reshape(-1) for r in real]).to(weight.dtype)


def cache_tensors(cache) -> list[torch.Tensor]:
    """Keys and values, layer by layer, of a Cache, a model output holding one, or legacy
    ((k, v), ...) tuples."""
    cache = getattr(cache, "past_key_values", cache)
    if isinstance(cache, Cache):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in cache for t in pair]
