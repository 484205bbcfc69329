"""`model.extend_vocab` end to end on a tiny model: after training only the new embedding rows and
the method's own parameters changed (old rows bit-identical, even with weight decay); the run
carries the extended tokenizer and the rows, so `load_run` and the adapter set behind `generate`
and `serve` give the trained model's logits and a merged folder loads with plain transformers and
gives them too; bad settings are one line,
exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tests.models.test_vocab import XHOSA as XHOSA_TEXT
from tunelab import train
from tunelab.cli import app
from tunelab.export.merge import merge_run
from tunelab.export.run import export_run
from tunelab.models.new_rows import add_rows
from tunelab.models.tiny import random_model
from tunelab.run import load_run
from tunelab.run_config import load_config
from tunelab.serve.adapters import AdapterSet
from tunelab.training import loop
from tunelab.training import vocab as vocab_module
from tunelab.training.vocab import VocabRun

XHOSA = XHOSA_TEXT[:8]  # isiXhosa written for the tests (tests/models/test_vocab.py)
PROBE = ["Abantwana bafunda kunye kakhulu.", "ukuba kwaye hello"]
NEW_TOKENS = 24


def write_data(root: Path) -> Path:
    path = root / "pairs.jsonl"
    rows = [{"prompt": f"Translate {i}:", "response": text} for i, text in enumerate(XHOSA)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(root: Path, method: str, **vocab) -> dict:
    return {
        "model": {"name": "random:llama",
                  "extend_vocab": {"corpus": "train", "new_tokens": NEW_TOKENS, **vocab}},
        "data": {"train": str(write_data(root)), "max_length": 96, "template": "plain"},
        "method": {"name": method},
        "train": {"max_steps": 3, "lr": 3e-2, "weight_decay": 0.1, "batch_size": 4,
                  "progress": False},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": str(root / f"run-{method}"),
    }  # fmt: skip


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROBE, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def base_name(name: str) -> str:
    """A wrapped model's parameter name as the plain base names it."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


@pytest.fixture
def captured(monkeypatch):
    """The trained model as the loop hands it to `save_adapter`, with its logits then (the probe
    encoded with the run's own extended tokenizer, as `VocabRun.write` receives it)."""
    seen = {}
    save, write = loop.save_adapter, loop.VocabRun.write

    def spy_save(method, model, cfg, files, extra=None):
        seen["state"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["logits"] = logits(model.eval(), seen["tokenizer"])
        save(method, model.train(), cfg, files, extra=extra)

    def spy_write(self, tokenizer):
        seen["tokenizer"] = tokenizer
        write(self, tokenizer)

    monkeypatch.setattr(loop, "save_adapter", spy_save)
    monkeypatch.setattr(loop.VocabRun, "write", spy_write)
    return seen


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_only_new_rows_and_the_method_train_and_the_run_reloads(method, tmp_path, captured):
    cfg = config(tmp_path, method)
    run_dir = Path(cfg["output_dir"])
    reference, base_tokenizer = random_model("llama")
    figures = train(cfg).summary["extend_vocab"]
    assert figures["added"] == NEW_TOKENS and figures["corpus"] == "train"
    assert figures["tokens_per_sentence_after"] < figures["tokens_per_sentence_before"]
    extension = json.loads((run_dir / "vocab" / "extension.json").read_text())
    add_rows(reference, extension["new_ids"], extension["pieces"])
    start = dict(reference.named_parameters())
    embedding = "model.embed_tokens.weight"
    new = torch.tensor(extension["new_ids"])
    method_params = 0
    for name, value in captured["state"].items():
        if base_name(name) not in start:
            method_params += 1  # the method's own (LoRA's A and B, BitFit's added biases)
            continue
        before = start[base_name(name)].detach()
        if base_name(name) == embedding:
            old = torch.ones(len(value), dtype=torch.bool)
            old[new] = False
            assert torch.equal(value[old], before[old]), "an old embedding row changed"
            assert not torch.allclose(value[new], before[new]), "the new rows did not train"
        elif method == "bitfit" and name.endswith(".bias"):
            method_params += 1
        else:
            assert torch.equal(value, before), f"{name} changed"
    assert method_params > 0
    model, tokenizer = load_run(run_dir)
    assert len(tokenizer) == len(base_tokenizer) + NEW_TOKENS
    torch.testing.assert_close(logits(model, tokenizer), captured["logits"], rtol=0, atol=1e-5)
    merged = merge_run(run_dir, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(merged)
    assert plain_tokenizer("ukuba kunye")["input_ids"] == tokenizer("ukuba kunye")["input_ids"]
    torch.testing.assert_close(
        logits(plain, plain_tokenizer), captured["logits"], rtol=0, atol=1e-5
    )
    served = AdapterSet.from_runs({"xhosa": run_dir})  # what `generate` and `serve` load
    torch.testing.assert_close(
        logits(served.model, served.tokenizer), captured["logits"], rtol=0, atol=1e-5
    )
    assert served.generate(["Abantwana"], 4, raw=True)[0]
    if method == "lora":
        check_gguf(run_dir, tmp_path, tokenizer, extension, captured["logits"])


def test_a_peft_adapter_never_carries_the_resized_embedding(tmp_path):
    """PEFT saves the whole embedding when the base it was loaded from (a folder with a
    config.json, as every embedded model is) has another vocabulary size: 1.3 GB on Gemma 3 for
    rows that live in new_rows.safetensors. The adapter holds LoRA's tensors only."""
    from tunelab.methods import get_method
    from tunelab.models.vocab import extend_tokenizer

    model, tokenizer = random_model("llama")
    model.config.save_pretrained(tmp_path / "base")
    model.name_or_path = str(tmp_path / "base")  # what from_pretrained(folder) sets
    _, extension = extend_tokenizer(tokenizer, ["ukuba kunye abantu ukuba kunye"] * 4, 4)
    add_rows(model, extension.new_ids, extension.pieces)
    cfg = load_config({"method": {"name": "lora", "r": 2}}).method
    lora = get_method("lora")
    peft_model = lora.apply(model, cfg, None)
    lora.save(peft_model, cfg, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)


def test_full_fine_tuning_trains_the_rows_with_everything_and_reloads(tmp_path, captured):
    cfg = config(tmp_path, "full")
    train(cfg)
    run_dir = Path(cfg["output_dir"])
    model, tokenizer = load_run(run_dir)
    torch.testing.assert_close(logits(model, tokenizer), captured["logits"], rtol=0, atol=1e-5)
    extension = json.loads((run_dir / "vocab" / "extension.json").read_text())
    reference, _ = random_model("llama")
    add_rows(reference, extension["new_ids"], extension["pieces"])
    start = reference.get_input_embeddings().weight.detach()
    trained = captured["state"]["model.embed_tokens.weight"]
    assert not torch.equal(trained[: extension["base_size"]], start[: extension["base_size"]])
    assert not torch.allclose(trained[extension["new_ids"]], start[extension["new_ids"]])


def test_a_resumed_run_reads_its_tokens_back_instead_of_learning_them_again(tmp_path, monkeypatch):
    cfg = load_config(config(tmp_path, "lora"))
    folder = tmp_path / "vocab"
    first = VocabRun(cfg, folder)
    _, extended = first.extend(*random_model("llama"), resume=False)
    first.write(extended)

    def never(*args, **kwargs):
        raise AssertionError("the tokens were learnt again")

    monkeypatch.setattr(vocab_module, "extend_tokenizer", never)
    again = VocabRun(cfg, folder)
    model, tokenizer = again.extend(*random_model("llama"), resume=True)
    assert again.extension.tokens == first.extension.tokens
    assert tokenizer.get_vocab() == extended.get_vocab()
    assert again.summary() == first.summary()
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def check_gguf(run_dir: Path, root: Path, tokenizer, extension: dict, expected) -> None:
    """The GGUF holds the new tokens as user-defined tokens (llama.cpp's kind for added tokens,
    matched in the raw text before BPE, as in HF) at their ids, and the merged weights: read
    back by transformers' GGUF loader, they give the trained logits."""
    path = export_run(run_dir, root / "model.gguf").path
    reader = gguf.GGUFReader(path)
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    types = reader.get_field("tokenizer.ggml.token_type").contents()
    for new_id, text in zip(extension["new_ids"], extension["tokens"], strict=True):
        assert tokens[new_id] == text and types[new_id] == gguf.TokenType.USER_DEFINED
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=path.name, dtype=torch.float32)
    batch = tokenizer(PROBE, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = model.eval()(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


runner = CliRunner()


@pytest.mark.parametrize(
    ("vocab", "message"),
    [
        ({"corpus": "no/such.txt"}, "model.extend_vocab.corpus: no such file no/such.txt"),
        ({"new_tokens": -1}, "model.extend_vocab.new_tokens: Input should be greater than"),
        ({"size": 5}, "model.extend_vocab.size: unknown key"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(vocab, message, tmp_path):
    cfg = config(tmp_path, "lora", **vocab)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not Path(cfg["output_dir"]).exists()
