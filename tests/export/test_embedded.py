"""The embedded SmolLM2-135M after a one-step LoRA run, exported at f32 and read back by
transformers' GGUF loader: the same token ids on a multilingual sample, the same logits
(≤ 1e-4) and the same greedy answer to a chat prompt."""

from __future__ import annotations

import pytest

from tunelab.export import export_run
from tunelab.export.merge import merged_model

from .conftest import TEXTS, greedy, logits, make_run, read_gguf


@pytest.mark.integration
def test_embedded_model_round_trips_at_f32(tmp_path):
    run = make_run(tmp_path, "lora", steps=1, model="embedded:smollm2-135m", lr=None)
    path = export_run(run, tmp_path / "smollm2.gguf").path
    merged, tokenizer, _ = merged_model(run)
    read, read_tokenizer = read_gguf(path)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert read_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        assert (logits(read, ids) - logits(merged, ids)).abs().max() <= 1e-4
    messages = [{"role": "user", "content": "Translate into isiXhosa: Good morning, my friend."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert read_tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids
    answer = greedy(merged, ids, steps=16)
    assert greedy(read, ids, steps=16) == answer
    assert len(set(answer)) > 3  # a real continuation, not one repeated token
