"""`random:<arch>` models: tiny, seeded, randomly initialised, with a byte-level tokenizer built
in code, so smoke tests and CI need no download. Vocabulary: 256 byte symbols + 4 specials."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from tunelab.errors import ModelError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN, LAYERS, HEADS = 64, 2, 4
WINDOW = 16  # sliding-window archs: shorter than the longer test examples, so the window matters


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: every UTF-8 byte is one token; EOS is <|im_end|>."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for special in SPECIALS:
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(arch: str, vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    llama_like = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS // 2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        **ids,
    )
    if arch == "llama":
        return LlamaConfig(**llama_like)
    if arch == "qwen2":
        return Qwen2Config(**llama_like)
    if arch == "gemma":
        return GemmaConfig(**llama_like, head_dim=HIDDEN // HEADS)
    if arch == "mistral":  # every layer slides
        return MistralConfig(**llama_like, sliding_window=WINDOW)
    if arch == "gemma3":  # one sliding, one full layer
        return Gemma3TextConfig(
            **llama_like,
            head_dim=HIDDEN // HEADS,
            query_pre_attn_scalar=HIDDEN // HEADS,  # as Gemma 3 270M: 1/sqrt(head_dim) scaling
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        )
    if arch == "bloom":
        return BloomConfig(
            vocab_size=vocab_size, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, **ids
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=1024,
            **ids,
        )
    raise ModelError(f"random:{arch}: unknown architecture; known: {', '.join(TINY_ARCHS)}")


TINY_ARCHS = ("llama", "qwen2", "gemma", "gemma3", "mistral", "bloom", "gpt2")


def random_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a tiny randomly initialised `arch`, identical for the same seed."""
    tokenizer = byte_tokenizer()
    config = _config(arch, len(tokenizer), tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
