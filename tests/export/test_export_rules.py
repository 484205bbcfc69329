"""What `export` refuses and how it writes: methods without a weight update, unsupported
architectures and tensors, bad options — one line, exit 2 from the CLI, nothing written, the
model never loaded where the reason needs none; the file is whole or absent, and an existing file
is replaced only when asked (and only if it is a GGUF file)."""

from __future__ import annotations

import gguf
import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import MergeNotSupported, TunelabError
from tunelab.export import export_run
from tunelab.export import run as export_module

from .conftest import make_run

runner = CliRunner()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if export gets as far as loading and merging the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(export_module, "merged_model", refuse)


@pytest.mark.parametrize("method", ["prompt", "prefix", "ptuning", "adapter"])
def test_methods_without_a_weight_update_refuse_before_loading(method, tmp_path, no_model_loading):
    run = make_run(tmp_path, method, steps=1)
    with pytest.raises(MergeNotSupported, match=rf"^{method}: ") as caught:
        export_run(run, tmp_path / "model.gguf")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.glob("*.gguf")) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dtype", "q4_k"], "dtype 'q4_k'; choose one of f32, f16, bf16, q8_0"),
        (["--format", "onnx"], "format 'onnx'"),
        (["--format", "hf", "--ollama", "x"], "--ollama and --dtype apply to --format gguf only"),
    ],
)
def test_bad_options_are_one_line_exit_2(arguments, message, tmp_path):
    run = make_run(tmp_path, "lora", steps=1)
    result = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "m.gguf"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.glob("m.gguf")) == []


def test_unsupported_architecture_refuses_before_loading(tmp_path, no_model_loading):
    run = make_run(tmp_path, "lora", "gpt2", steps=1)
    with pytest.raises(TunelabError, match="architecture 'gpt2' has no GGUF export here"):
        export_run(run, tmp_path / "model.gguf")


def test_a_tensor_outside_the_layout_refuses_and_writes_nothing(tmp_path):
    """BitFit adds biases to llama's projections; transformers' GGUF reader would drop them."""
    run = make_run(tmp_path, "bitfit", "llama", steps=1)
    with pytest.raises(TunelabError, match=r"q_proj\.bias is not part of the llama GGUF layout"):
        export_run(run, tmp_path / "model.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]


def test_existing_output_is_replaced_only_when_asked_and_only_a_gguf(tmp_path):
    run = make_run(tmp_path, "lora", steps=1)
    output = export_run(run, tmp_path / "model.gguf").path
    before = output.read_bytes()
    with pytest.raises(TunelabError, match="exists; pass --overwrite"):
        export_run(run, output, dtype="q8_0")
    assert output.read_bytes() == before
    export_run(run, output, dtype="q8_0", overwrite=True)
    assert gguf.GGUFReader(output).get_field("general.file_type").contents() == 7  # MOSTLY_Q8_0
    notes = tmp_path / "notes.gguf"
    notes.write_text("mine")
    with pytest.raises(TunelabError, match="is not a GGUF file; it is not replaced"):
        export_run(run, notes, overwrite=True)
    assert notes.read_text() == "mine"
    for bad, message in ((tmp_path / "model.bin", "should end in .gguf"), (run, "should end")):
        with pytest.raises(TunelabError, match=message):
            export_run(run, bad)


def test_an_interrupted_write_leaves_the_earlier_file_and_no_scraps(tmp_path, monkeypatch):
    run = make_run(tmp_path, "lora", steps=1)
    output = export_run(run, tmp_path / "model.gguf").path
    before = output.read_bytes()
    original = gguf.GGUFWriter.write_tensors_to_file

    def interrupted(writer, *, progress=False):
        writer.fout[0].write(b"\0" * 1000)  # some tensor bytes reach the disk, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(run, output, dtype="f16", overwrite=True)
    assert output.read_bytes() == before
    fresh = tmp_path / "fresh.gguf"
    with pytest.raises(KeyboardInterrupt):
        export_run(run, fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.name, "model.gguf"])
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", original)


def test_cli_writes_gguf_and_hf(tmp_path):
    run = make_run(tmp_path, "lora", "qwen2", steps=1)
    result = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "m.gguf")])
    assert result.exit_code == 0, result.output
    assert gguf.GGUFReader(tmp_path / "m.gguf").get_field("tunelab.method").contents() == "lora"
    result = runner.invoke(app, ["export", str(run), "--format", "hf", "-o", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "config.json").is_file()
