"""The run's tokenizer as GGUF metadata (`tokenizer.ggml.*`), the way llama.cpp's converter
writes a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`):

- tokens in id order, spelled as the tokenizer spells them (byte-level symbols such as `Ġthe`;
  added tokens as written), with their type: control (special added), user-defined (other added),
  normal, or unused for ids the model has but the tokenizer lacks (`[PAD<id>]`);
- the merges as `"left right"` strings, in rank order;
- the special token ids, whether BOS/EOS are added, the pre-tokenizer name and the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from tunelab.errors import TunelabError


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int, pre: str) -> None:
    """Write the vocabulary, merges, special ids and chat template of `tokenizer`."""
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = bpe_merges(tokenizer)
    if merges:
        writer.add_token_merges(merges)
    else:  # the gguf writer cannot store an empty array; scores let readers derive no merges
        writer.add_token_scores([0.0] * len(tokens))
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}  # fmt: skip
    for name, add in setters.items():
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(token_id)
    adds_bos, adds_eos = added_specials(tokenizer)
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(adds_eos)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """(token strings, gguf.TokenType values) for ids 0..vocab_size-1."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise TunelabError(
            f"export: the tokenizer has id {max(by_id)} but the model only {vocab_size} embeddings"
        )
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            special = added[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(kind) for kind in types]


def bpe_merges(tokenizer) -> list[str]:
    """The BPE merges as `"left right"`, or a refusal for a tokenizer that is not byte-level BPE
    (llama.cpp's `gpt2` vocabulary type is the only one written here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunelabError("export: the run's tokenizer is not a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise TunelabError(
            f"export: tokenizer model {spec['model']['type']!r} without a byte-level decoder; "
            "only byte-level BPE vocabularies (GPT-2 style) are exported"
        )
    return [
        merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"]["merges"]
    ]


def added_specials(tokenizer) -> tuple[bool, bool]:
    """Does encoding add BOS / EOS? Observed, not read from flags that differ by tokenizer."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    added = len(full) > len(plain)
    return added and full[0] == tokenizer.bos_token_id, added and full[-1] == tokenizer.eos_token_id


def pre_tokenizer_name(model_name: str, tokenizer) -> str:
    """llama.cpp's name for the text splitting before BPE: carried over from the source GGUF
    when the base model came from one (the embedded model does), else recognised from the
    tokenizer's split regex by transformers' own table, else `default` (GPT-2's)."""
    source = _source_gguf(model_name)
    if source is not None:
        field = gguf.GGUFReader(source).get_field(gguf.Keys.Tokenizer.PRE)
        if field is not None:
            return str(field.contents())
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    spec = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else ""
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        if json.dumps(regex)[1:-1] in spec:
            return name
    return "default"


def _source_gguf(model_name: str) -> Path | None:
    if model_name.startswith("embedded:"):
        from tunelab.models.load import embedded_gguf

        return embedded_gguf(model_name.removeprefix("embedded:"))
    path = Path(model_name).expanduser()
    return path if path.suffix.lower() == ".gguf" and path.is_file() else None
