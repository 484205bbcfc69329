"""Tiny runs of benchmarks/throughput.py on random:llama (two steps per side): every reference
side and both tunelab variants complete in one invocation and print what the docstring says,
with the work counts that the sides' batching implies; the other methods run on both sides.
Timings are not checked: they mean nothing on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATIO = re.compile(
    r"^ratio tunelab=(\S+) reference=(\S+) tokens_per_s=(\d+\.\d\d) peak_memory=(\d+\.\d\d) "
    r"eval_loss_delta=(-?\d+\.\d{3})$"
)
COLUMNS = ("tokens_per_s", "per_cpu_s", "rss", "eval_loss", "effective", "true", "model_tokens",
           "head_rows", "steps", "stolen")  # fmt: skip
TINY = ["--model", "random:llama", "--steps", "2", "--batch-size", "4", "--max-length", "192",
        "--eval-examples", "4", "--threads", "1"]  # fmt: skip


def write_pairs(path: Path, count: int = 40) -> None:
    """Translation-like rows of varied length, with the benchmark's default field names; every
    example opens with the same chat-templated instruction (a shared prefix)."""
    words = ["ilanga", "amanzi", "umntu", "indlu", "inja", "ikati", "umthi", "incwadi"]
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            size = 2 + index % 7
            english = " ".join(f"word{(index + k) % 11}" for k in range(size))
            xhosa = " ".join(words[(index + k) % len(words)] for k in range(size + 1))
            row = {"inputs": f"Translate into isiXhosa.\n\n{english}", "targets": xhosa}
            handle.write(json.dumps(row) + "\n")


def side_rows(lines: list[str]) -> dict[str, dict[str, float]]:
    """The per-side table: side name -> its numeric columns."""
    rows = {}
    for line in lines:
        fields = line.split()
        if fields and fields[0].startswith(("reference:", "tunelab:")):
            values = [float(value.rstrip("%")) for value in fields[1 : 1 + len(COLUMNS)]]
            rows[fields[0]] = dict(zip(COLUMNS, values, strict=True))
    return rows


def test_every_reference_and_both_tunelab_variants(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY,
               "--data", str(data), "--reference", "fastest"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    real_tokens = int(re.search(r"(\d+) real tokens", done.stdout).group(1))
    rows = side_rows(lines)
    references = ["random", "grouped", "flat", "trl"]
    if importlib.util.find_spec("trl") is None:  # the bench extra is not installed
        assert (
            "reference trl left out: trl is not installed (pip install 'tunelab[bench]')" in lines
        )
        references.remove("trl")
    assert set(rows) == {*(f"reference:{r}" for r in references),
                         "tunelab:default", "tunelab:no-shared-prefix"}  # fmt: skip
    assert all(row["steps"] == 2 for row in rows.values())  # the same optimizer steps
    assert all(0 <= row["stolen"] <= 100 for row in rows.values())  # a share of the machine, %
    losses = [row["eval_loss"] for row in rows.values()]
    assert max(losses) - min(losses) < 0.05  # same examples, same schedule, tiny model
    # Work counted by the hooks: padded sides run padding, flattened ones exactly the tokens,
    # tunelab's default variant fewer (the shared prefix once per row).
    assert rows["reference:random"]["model_tokens"] >= real_tokens
    assert rows["reference:flat"]["model_tokens"] == real_tokens
    assert rows.get("reference:trl", {"model_tokens": real_tokens})["model_tokens"] == real_tokens
    assert rows["tunelab:no-shared-prefix"]["model_tokens"] == real_tokens
    assert rows["tunelab:default"]["model_tokens"] < real_tokens
    # The head: every position on the references, the labelled ones only on tunelab's.
    assert rows["reference:random"]["head_rows"] == rows["reference:random"]["model_tokens"]
    labelled = rows["tunelab:default"]["head_rows"]
    assert labelled == rows["tunelab:no-shared-prefix"]["head_rows"]
    assert 0 < labelled < rows["reference:flat"]["head_rows"]
    # Skipped work raises effective MFU above true utilisation on tunelab's side only.
    default = rows["tunelab:default"]
    assert default["effective"] >= default["true"]
    fastest = max(references, key=lambda r: rows[f"reference:{r}"]["tokens_per_s"])
    assert f"fastest reference: {fastest}" in lines
    ratios = [RATIO.match(line) for line in lines[-2:]]
    assert all(ratios), lines[-2:]
    assert [m.group(1, 2) for m in ratios] == [("default", fastest), ("no-shared-prefix", fastest)]
    for match in ratios:
        speed, memory, delta = (float(value) for value in match.group(3, 4, 5))
        assert speed > 0 and memory > 0 and abs(delta) < 0.05


@pytest.fixture
def bench(monkeypatch):
    """The benchmark's modules, imported the way throughput.py's side processes import them."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import references
    import sides
    import throughput

    return throughput, sides, references


@pytest.mark.parametrize(
    "method", ["dora", "ia3", "prompt", "ptuning", "prefix", "adapter", "bitfit", "importance"]
)
def test_other_methods_run_on_both_sides(bench, tmp_path, method):
    throughput, sides, references = bench
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    args = throughput.parse_args([*TINY, "--data", str(data), "--method", method, "--lr", "1e-3"])
    reference = sides.figures(references.run_reference(args, "random"))
    ours = sides.figures(sides.run_tunelab(args, "default"))
    assert reference["steps"] == ours["steps"] == 2
    assert reference["trainable_params"] == ours["trainable_params"] > 0  # the same method
    assert abs(reference["eval_loss"] - ours["eval_loss"]) < 0.05
    assert ours["head_rows"] < reference["head_rows"]


def test_bf16_autocast_on_both_sides(tmp_path):
    """--precision bf16 trains both sides under bf16 autocast and divides by the bf16 peak (in
    its own processes: autocast settles accelerate's process-wide state)."""
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY,
               "--data", str(data), "--reference", "grouped", "--tunelab-variants", "default",
               "--precision", "bf16"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"; bf16, matmul peak \d+\.\d GFLOP/s", done.stdout)
    rows = side_rows(done.stdout.splitlines())
    assert set(rows) == {"reference:grouped", "tunelab:default"}
    match = RATIO.match(done.stdout.strip().splitlines()[-1])
    assert match and match.group(1, 2) == ("default", "grouped")
    assert abs(float(match.group(5))) < 0.05


def test_device_cuda_without_a_gpu_is_refused_before_any_work(bench, capsys, monkeypatch):
    throughput, _, _ = bench
    monkeypatch.setattr(throughput.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        throughput.parse_args(["--device", "cuda", "--precision", "bf16"])
    assert stopped.value.code == 2
    assert "--device cuda: torch sees no CUDA GPU" in capsys.readouterr().err
    assert throughput.parse_args([]).device == "cpu"


def test_prompt_style_methods_refuse_flattened_references(bench, capsys):
    throughput, _, _ = bench
    with pytest.raises(SystemExit) as stopped:
        throughput.parse_args(["--method", "prefix", "--reference", "flat"])
    assert stopped.value.code == 2
    assert "--reference flat: not with --method prefix" in capsys.readouterr().err
    for method in ("prompt", "ptuning"):
        chosen = throughput.chosen_references(throughput.parse_args(["--method", method]))
        references, notes = chosen
        assert references == ["random", "grouped"] and len(notes) == 2
