"""`export_run --format gguf`, read back by transformers' GGUF loader: for every supported
architecture and each method family (LoRA-family, full, tunelab's own), the file gives the merged
model's logits and greedy tokens at f32 and the run tokenizer's ids on a multilingual sample; the
smaller dtypes stay within stated tolerances; the provenance and chat template travel along."""

from __future__ import annotations

import math

import gguf
import pytest
import torch

from tunelab.export import export_run
from tunelab.export.merge import merged_model
from tunelab.models import load_model_and_tokenizer
from tunelab.run import read_run_config

from .conftest import TEXTS, greedy, logits, make_run, read_gguf

MATRIX = [
    ("llama", "lora", None),
    ("llama", "full", None),
    ("llama", "importance", {"calibration_steps": 2}),
    ("qwen2", "dora", None),
    ("qwen2", "ulmfit", None),
    ("qwen2", "bitfit", {"targets": "attention", "add_missing": False}),  # native q/k/v biases
    ("gemma", "ia3", None),
    ("gemma", "full", None),
    ("gemma", "importance", {"calibration_steps": 2}),
]


@pytest.mark.parametrize(("arch", "method", "settings"), MATRIX)
def test_f32_file_gives_the_merged_model(arch, method, settings, tmp_path):
    run = make_run(tmp_path, method, arch, settings)
    path = export_run(run, tmp_path / "model.gguf").path
    merged, tokenizer, cfg = merged_model(run)
    read, read_tokenizer = read_gguf(path)
    base, _ = load_model_and_tokenizer(cfg.model)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert read_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        expected = logits(merged, ids)
        assert (logits(read, ids) - expected).abs().max() <= 1e-4
        assert greedy(read, ids) == greedy(merged, ids)
    assert (logits(base, ids) - expected).abs().max() > 1e-3  # the exported update matters


def perplexity(model, rows: list[list[int]]) -> float:
    """exp(mean next-token loss) over the rows."""
    losses = [
        torch.nn.functional.cross_entropy(logits(model, ids)[:-1], torch.tensor(ids[1:]))
        for ids in rows
    ]
    return math.exp(torch.stack(losses).mean().item())


def test_smaller_dtypes_stay_close_and_are_smaller(tmp_path):
    """f16 / bf16 logits within 1 % / 5 % of the largest logit; q8_0 perplexity within 1 %; matrices
    take the chosen type, norms stay f32; each file is smaller than the last."""
    run = make_run(tmp_path, "lora", "llama")
    merged, tokenizer, _ = merged_model(run)
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    reference = perplexity(merged, rows)
    tolerance = {"f16": 0.01, "bf16": 0.05}  # max |difference| / max |logit|
    sizes = {}
    for dtype, matrix_type in (("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")):
        path = export_run(run, tmp_path / f"{dtype}.gguf", dtype=dtype).path
        sizes[dtype] = path.stat().st_size
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        assert types["blk.0.attn_q.weight"] == matrix_type
        assert types["blk.0.attn_norm.weight"] == "F32"
        read, _ = read_gguf(path)
        if dtype in tolerance:
            for ids in rows:
                expected = logits(merged, ids)
                error = (logits(read, ids) - expected).abs().max() / expected.abs().max()
                assert error <= tolerance[dtype]
        if dtype == "q8_0":
            assert abs(perplexity(read, rows) / reference - 1) < 0.01
    assert sizes["f32"] > sizes["f16"] == pytest.approx(sizes["bf16"], rel=0.01)
    assert sizes["bf16"] > sizes["q8_0"]


def test_metadata_carries_provenance_template_and_special_tokens(tmp_path):
    run = make_run(tmp_path, "lora", "qwen2")
    path = export_run(run, tmp_path / "model.gguf").path
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    assert field("general.architecture") == "qwen2"
    assert field("tunelab.method") == "lora"
    assert field("tunelab.run") == run.name
    assert field("tunelab.base_model") == "random:qwen2"
    assert field("tokenizer.ggml.model") == "gpt2"
    _, tokenizer, _ = merged_model(run)
    _, read_tokenizer = read_gguf(path)
    assert read_tokenizer.chat_template == tokenizer.chat_template
    for name in ("bos_token", "eos_token", "pad_token"):
        assert getattr(read_tokenizer, name) == getattr(tokenizer, name)
    messages = [{"role": "user", "content": "Molo"}]
    assert read_tokenizer.apply_chat_template(messages, add_generation_prompt=True) == (
        tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    )
    assert read_run_config(run).method.name == "lora"
