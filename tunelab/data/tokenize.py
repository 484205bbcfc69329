"""Tokenise examples into ids and labels, with -100 on every position that carries no loss.

    input_ids = tokens(prompt) + tokens(response) + [EOS]
    labels    = -100 on the prompt (unless train_on_prompt), the ids on response and EOS,
                and -100 at position 0 always.

Prompt and response are tokenised separately, so the boundary between "what the model is
given" and "what it learns to say" is exact even where a merged tokenisation would fuse the
two. The rendered prompt already holds the chat template's special tokens, so nothing more is
added, except a BOS for tokenizers that normally prepend one (Llama-style) when the prompt
lacks it. EOS is learned so generation stops. Position 0 never carries a label: in a packed
row it would be predicted from the previous example's last token.

`data.chunk_text` (continued pretraining on long documents): a prompt-less text longer than
max_length becomes several rows instead of losing its tail to truncation.
"""

from __future__ import annotations

import logging
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.types import IGNORE, Example, Tokenized
from tunelab.errors import DataError

log = logging.getLogger(__name__)


def tokenize_examples(examples: list[Example], tokenizer: Any, cfg: DataConfig) -> list[Tokenized]:
    """Tokenise all examples in two batched calls; drop (and log) those left with no labels."""
    prompts = _encode([example.prompt for example in examples], tokenizer)
    responses = _encode([example.response for example in examples], tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = missing_bos(tokenizer)
    items, dropped = [], 0
    for example, prompt, response in zip(examples, prompts, responses, strict=True):
        if bos is not None and (not prompt or prompt[0] != bos):
            prompt = [bos, *prompt]
        if cfg.chunk_text and not example.prompt:  # plain text: pieces instead of truncation
            items += text_chunks(prompt, response + eos, cfg.max_length, example.source)
            continue
        prompt, response = _fit(prompt, response + eos, example, cfg)
        input_ids = prompt + response
        # Position 0 never counts, so: all but one token, or the response minus a leading one.
        labelled = len(input_ids) - 1 if cfg.train_on_prompt else len(response) - (not prompt)
        if labelled <= 0:
            dropped += 1
            continue
        labels = list(prompt) if cfg.train_on_prompt else [IGNORE] * len(prompt)
        labels += response
        labels[0] = IGNORE
        items.append(Tokenized(input_ids, labels, example.source))
    if dropped:
        log.info("dropped %d of %d examples with no tokens to learn from", dropped, len(examples))
    return items


def text_chunks(head: list[int], tokens: list[int], limit: int, source: str) -> list[Tokenized]:
    """Plain text of any length as rows of at most `limit` tokens, each token of it learned
    exactly once (bar the first, as always): the first row is `head` (the BOS, if any) and the
    text's start; every later row opens with the last token of the row before as context."""
    if len(head) + len(tokens) <= limit:
        ids = [*head, *tokens]
        return [Tokenized(ids, [IGNORE, *ids[1:]], source)] if len(ids) > 1 else []
    rows, end = [], limit - len(head)
    first = [*head, *tokens[:end]]
    rows.append(Tokenized(first, [IGNORE, *first[1:]], f"{source} (piece 1)"))
    while end < len(tokens):
        piece = tokens[end - 1 : end - 1 + limit]
        rows.append(Tokenized(piece, [IGNORE, *piece[1:]], f"{source} (piece {len(rows) + 1})"))
        end += limit - 1
    return rows


def _encode(texts: list[str], tokenizer: Any) -> list[list[int]]:
    # Empty strings are skipped: some tokenizers reject them, and they have no tokens anyway.
    filled = [index for index, text in enumerate(texts) if text]
    encoded: list[list[int]] = [[] for _ in texts]
    if filled:
        ids = tokenizer([texts[i] for i in filled], add_special_tokens=False)["input_ids"]
        for index, row in zip(filled, ids, strict=True):
            encoded[index] = list(row)
    return encoded


def missing_bos(tokenizer: Any) -> int | None:
    """The BOS id if this tokenizer prepends one to plain text (Llama-style), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if probe and probe[0] == bos else None


def _fit(
    prompt: list[int], response: list[int], example: Example, cfg: DataConfig
) -> tuple[list[int], list[int]]:
    """Cut prompt+response to cfg.max_length, or raise if truncation is off.

    The response keeps what fits after the prompt but at least half the window (or all of it
    if shorter); a prompt that is still too long loses its *left* part, so the template's end
    (e.g. "<|im_start|>assistant\\n"), which the response must follow, stays intact.
    """
    limit = cfg.max_length
    total = len(prompt) + len(response)
    if total <= limit:
        return prompt, response
    if not cfg.truncate:
        raise DataError(
            f"{example.source}: {total} tokens, longer than data.max_length={limit} "
            "(raise max_length or set data.truncate=true)"
        )
    response_budget = min(len(response), max(limit - len(prompt), limit // 2))
    prompt_budget = limit - response_budget
    prompt = prompt[len(prompt) - prompt_budget :]
    return prompt, response[:response_budget]
