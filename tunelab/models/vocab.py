"""Vocabulary extension, the tokenizer side: learn new tokens from target-language text and add
them to the base tokenizer so that encoding actually uses them.

    corpus -> auxiliary byte-level BPE (the base's own pre-tokenizer) -> rank its tokens ->
    the N best become added tokens of a copy of the base tokenizer

Ranking rule: a candidate is a token the auxiliary tokenizer emits when encoding the corpus
and whose text the base tokenizer splits into k >= 2 pieces; its score is (times it is emitted
over the corpus) x (k - 1), i.e. how many base tokens it saves across the corpus. Counting
emissions rather than raw substring occurrences favours the units the corpus is naturally cut
into (words with their leading space, common prefixes): on the Xhosa data substring counts
chose short fragments (`nga`, `thi`) that made English prompts 5-7 % longer; emission counts did
not (README). The N highest scores win
(ties: the token text, so the choice is deterministic). Texts that are not whole UTF-8 (a
byte-level piece of a multi-byte character) or are whitespace only are never chosen.

How they are used: HF tokenizers match added tokens in the raw text, leftmost and longest first,
before pre-tokenization and BPE. A new token's text carries its leading space (the aux token
`Ġukuba` is added as " ukuba"), so it is matched together with the space before the word and
`decode(encode(x)) == x` still holds (tested). Word-internal tokens (no leading space) match
inside any word, English ones included; on the Xhosa data English prompts did not get longer
(README).

Two kinds of BPE are extended, each with an auxiliary of its own kind:
- byte-level (GPT-2 style, SmolLM2): the auxiliary is a byte-level BPE with the base's
  normalizer and pre-tokenizer; its `Ġukuba` decodes to " ukuba".
- SentencePiece-style without a dummy prefix (Gemma 3): the normalizer turns every space into
  `▁` and BPE (with byte fallback) runs over the result; the auxiliary is a BPE over the same
  normalized text, split before each `▁` and around punctuation as SentencePiece cuts words, so
  its `▁ukuba` decodes (with the base's decoder) to " ukuba". Tokenizers that prepend a `▁` to
  the text (Llama 2's Metaspace) are refused: a leading-space token would break
  `decode(encode(x)) == x` there.
Other kinds (WordPiece, Unigram) are refused with one line rather than extended wrongly.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from tunelab.errors import ConfigError

AUX_MIN_SIZE = 2000  # auxiliary vocabulary size (learnt tokens) for small N
AUX_PER_NEW_TOKEN = 8  # ... and for large N: candidates enough after removing the base's own
AUX_MAX_SIZE = 32000


@dataclass
class Extension:
    """What an extension added: `tokens` (texts, in id order from `new_ids[0]`), `pieces` (the
    base token ids each text encoded to with the original tokenizer; their rows' mean initialises
    the new row) and `base_size` (len of the original tokenizer)."""

    tokens: list[str]
    pieces: list[list[int]]
    base_size: int
    new_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"base_size": self.base_size, "new_ids": self.new_ids,
                "tokens": self.tokens, "pieces": self.pieces}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Extension:
        return cls(data["tokens"], data["pieces"], data["base_size"], data["new_ids"])


BYTE_LEVEL, SENTENCEPIECE = "byte-level", "sentencepiece"
SPACE_MARK = "\u2581"  # ▁, SentencePiece's space


def check_extendable(tokenizer: Any) -> str:
    """The tokenizer's kind (BYTE_LEVEL or SENTENCEPIECE); one line refusing any kind this module
    cannot extend faithfully."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            "model.extend_vocab: needs a fast (tokenizers) tokenizer; this model has a slow one"
        )
    spec = json.loads(backend.to_str())
    kind = spec["model"]["type"]
    pre = _types(spec.get("pre_tokenizer"), "pretokenizers")
    norm = _parts(spec.get("normalizer"), "normalizers")
    if kind == "BPE" and "ByteLevel" in pre:
        return BYTE_LEVEL
    marks_spaces = any(part["type"] == "Replace" and part["pattern"].get("String") == " "
                       and part["content"] == SPACE_MARK for part in norm)  # fmt: skip
    prepends = any(part["type"] in ("Prepend", "Precompiled") for part in norm)
    if kind == "BPE" and marks_spaces and not prepends and set(pre) <= {"Split"}:
        return SENTENCEPIECE
    raise ConfigError(
        f"model.extend_vocab: only byte-level BPE (GPT-2 style) and SentencePiece-style BPE "
        f"without a dummy prefix (Gemma 3) can be extended here; this one is {kind} with "
        f"normalizer {'+'.join(p['type'] for p in norm) or 'none'} and pre-tokenizer "
        f"{'+'.join(pre) or 'none'}"
    )


def _parts(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    if component["type"] == "Sequence":
        return [p for part in component[key] for p in _parts(part, key)]
    return [component]


def _types(component: dict | None, key: str) -> list[str]:
    return [part["type"] for part in _parts(component, key)]


def train_auxiliary(
    tokenizer: Any, corpus: Sequence[str], size: int, kind: str | None = None
) -> Tokenizer:
    """A BPE of `size` learnt tokens trained on `corpus`, of the base tokenizer's kind (`kind`,
    or `check_extendable`'s answer) and with its normalizer, so its tokens fall on the same
    boundaries as the base's (module doc)."""
    backend = tokenizer.backend_tokenizer
    aux = Tokenizer(models.BPE())
    if backend.normalizer is not None:
        aux.normalizer = backend.normalizer
    if (kind or check_extendable(tokenizer)) == BYTE_LEVEL:
        aux.pre_tokenizer = backend.pre_tokenizer
        aux.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        aux.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(SPACE_MARK, behavior="merged_with_next"),
            pre_tokenizers.Punctuation("isolated"),  # "kakhulu." is "kakhulu" + "."
        ])  # fmt: skip
        aux.decoder = backend.decoder
        alphabet = sorted(set("".join(corpus).replace(" ", SPACE_MARK)))
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + size,
        min_frequency=2,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    aux.train_from_iterator(list(corpus), trainer)
    return aux


def rank_candidates(tokenizer: Any, aux: Tokenizer, corpus: Sequence[str]) -> list[tuple]:
    """(score, text, base pieces) for every usable auxiliary token, best first (rule above)."""
    counts: Counter[str] = Counter()
    for encoding in aux.encode_batch(list(corpus), add_special_tokens=False):
        counts.update(encoding.tokens)
    taken = set(tokenizer.get_vocab()) | {str(t) for t in tokenizer.added_tokens_decoder.values()}
    backend = tokenizer.backend_tokenizer
    ranked = []
    for token, count in counts.items():
        text = aux.decoder.decode([token])
        if "\ufffd" in text or not text.strip() or token in taken or text in taken:
            continue
        pieces = backend.encode(text, add_special_tokens=False).ids
        if len(pieces) >= 2:
            ranked.append((count * (len(pieces) - 1), text, pieces))
    ranked.sort(key=lambda item: (-item[0], item[1]))
    return ranked


def extend_tokenizer(
    tokenizer: Any, corpus: Sequence[str], new_tokens: int
) -> tuple[Any, Extension]:
    """(a copy of `tokenizer` with up to `new_tokens` added tokens, what was added). Fewer are
    added when the corpus offers fewer candidates; `tokenizer` itself is left untouched."""
    kind = check_extendable(tokenizer)
    texts = [text for text in corpus if text.strip()]
    if not texts:
        raise ConfigError("model.extend_vocab.corpus: holds no text to learn tokens from")
    size = min(max(AUX_MIN_SIZE, AUX_PER_NEW_TOKEN * new_tokens), AUX_MAX_SIZE)
    chosen = rank_candidates(tokenizer, train_auxiliary(tokenizer, texts, size, kind), texts)
    chosen = chosen[:new_tokens]
    extended = copy.deepcopy(tokenizer)
    base_size = len(tokenizer)
    extended.add_tokens([AddedToken(text, normalized=False, special=False)
                         for _, text, _ in chosen])  # fmt: skip
    tokens = [text for _, text, _ in chosen]
    new_ids = extended.convert_tokens_to_ids(tokens)
    return extended, Extension(tokens, [p for *_, p in chosen], base_size, list(new_ids))


def tokens_per_text(tokenizer: Any, texts: Sequence[str]) -> float:
    """Mean token count of `texts` (no special tokens added): the figure extension lowers."""
    if not texts:
        return 0.0
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return sum(map(len, encoded)) / len(encoded)
