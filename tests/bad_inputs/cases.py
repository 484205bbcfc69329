"""The bad-input corpus: every case builds its inputs under a fresh folder and returns the
command line plus a fragment the one-line error must contain (the key, file:line or flag).

A case is `(tmp, runs) -> (argv, expected)`; `runs` are finished runs to copy and damage.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from tests.bad_inputs.corpus import base_config, copy_run, write_yaml

Case = Callable[[Path, dict], tuple[list[str], str]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


def train_with(tmp: Path, expected: str, **changes) -> tuple[list[str], str]:
    """`tunelab train` on the base config with `changes` applied."""
    return ["train", str(write_yaml(tmp / "c.yaml", base_config(tmp, **changes)))], expected


def train_on_data(tmp: Path, name: str, content: bytes | str, expected: str, **data):
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return train_with(tmp, expected, data={"train": str(path), "eval": None, **data})


# ---------------------------------------------------------------- configs


@case
def unknown_top_level_key(tmp, runs):
    return train_with(tmp, "outptu_dir: unknown key", outptu_dir="x")


@case
def unknown_train_key(tmp, runs):
    return train_with(tmp, "train.learning_rate: unknown key", train={"learning_rate": 1e-3})


@case
def wrong_type_batch_size(tmp, runs):
    return train_with(tmp, "train.batch_size", train={"batch_size": "eight"})


@case
def negative_learning_rate(tmp, runs):
    return train_with(tmp, "train.lr", train={"lr": -1.0})


@case
def zero_max_steps(tmp, runs):
    return train_with(tmp, "train.max_steps", train={"max_steps": 0})


@case
def eval_fraction_above_one(tmp, runs):
    return train_with(tmp, "data.eval_fraction", data={"eval": None, "eval_fraction": 1.5})


@case
def betas_of_wrong_length(tmp, runs):
    return train_with(tmp, "train.betas", train={"betas": [0.9]})


@case
def unknown_schedule(tmp, runs):
    return train_with(tmp, "train.schedule", train={"schedule": "cosinus"})


@case
def unknown_method(tmp, runs):
    return train_with(tmp, "unknown method 'lorra'", method={"name": "lorra"})


@case
def method_field_typo(tmp, runs):
    return train_with(tmp, "method.rank: unknown key", method={"name": "lora", "rank": 8})


@case
def method_section_not_a_mapping(tmp, runs):
    return train_with(tmp, "method", method="lora")


@case
def target_modules_typo(tmp, runs):
    changes = {"method": {"name": "lora", "target_modules": ["q_proj", "v_prj"]}}
    return train_with(tmp, "method.target_modules: no module named 'v_prj'", **changes)


@case
def dora_target_modules_typo(tmp, runs):
    changes = {"method": {"name": "dora", "target_modules": ["qproj"]}}
    return train_with(tmp, "method.target_modules: no module named 'qproj'", **changes)


@case
def ia3_feedforward_modules_typo(tmp, runs):
    method = {"name": "ia3", "target_modules": ["k_proj", "down_proj"],
              "feedforward_modules": ["dwn_proj"]}  # fmt: skip
    return train_with(tmp, "method.feedforward_modules", method=method)


@case
def lora_bias_typo(tmp, runs):
    return train_with(tmp, "method.bias", method={"name": "lora", "bias": "nonee"})


@case
def adapter_placement_typo(tmp, runs):
    return train_with(tmp, "method.placement", method={"name": "adapter", "placement": "mpl"})


@case
def removed_compile_key(tmp, runs):
    return train_with(tmp, "train.compile: removed", train={"compile": True})


@case
def fp16_on_cpu(tmp, runs):
    return train_with(tmp, "train.precision: fp16 needs a GPU", train={"precision": "fp16"})


@case
def unknown_eval_metric(tmp, runs):
    return train_with(tmp, "unknown metric 'blue'", eval={"metrics": ["loss", "blue"]})


@case
def template_without_placeholder(tmp, runs):
    return train_with(tmp, "template 'Q: A:'", data={"template": "Q: A:"})


@case
def unknown_builtin_data(tmp, runs):
    return train_with(tmp, "builtin:nosuch", data={"train": "builtin:nosuch"})


@case
def config_not_yaml(tmp, runs):
    path = tmp / "c.yaml"
    path.write_text("model:\n  name: random:llama\ntrain: [1,\n")
    return ["train", str(path)], "c.yaml:"


@case
def config_is_a_list(tmp, runs):
    path = tmp / "c.yaml"
    path.write_text("- model\n- train\n")
    return ["train", str(path)], "expected a mapping"


@case
def config_missing(tmp, runs):
    return ["train", str(tmp / "absent.yaml")], "absent.yaml: no such config file"


@case
def override_without_equals(tmp, runs):
    argv, _ = train_with(tmp, "")
    return [*argv, "train.lr"], "override 'train.lr': expected KEY=VALUE"


@case
def override_into_a_value(tmp, runs):
    argv, _ = train_with(tmp, "")
    return [*argv, "output_dir.x=1"], "override output_dir.x"


@case
def override_unknown_key(tmp, runs):
    argv, _ = train_with(tmp, "")
    return [*argv, "train.lrr=1"], "train.lrr: unknown key"


@case
def second_train_into_a_finished_run(tmp, runs):
    run = copy_run(runs, "lora", tmp / "out")
    return train_with(tmp, "--overwrite", output_dir=str(run))


@case
def train_over_an_unfinished_run(tmp, runs):
    step = tmp / "out" / "checkpoints" / "step-0000001"
    step.mkdir(parents=True)
    (step / "trainable.safetensors").write_bytes(b"")
    return train_with(tmp, "--resume to continue it or --overwrite")


@case
def resume_under_a_changed_config(tmp, runs):
    run = copy_run(runs, "lora", tmp / "out")
    argv, _ = train_with(tmp, "", output_dir=str(run), train={"lr": 0.5})
    return [*argv, "--resume"], "train.lr: differs from the run"


# ---------------------------------------------------------------- data files


@case
def jsonl_malformed_line(tmp, runs):
    rows = '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n'
    return train_on_data(tmp, "rows.jsonl", rows, "rows.jsonl:2")


@case
def jsonl_row_not_an_object(tmp, runs):
    return train_on_data(tmp, "rows.jsonl", '{"prompt": "a", "response": "b"}\n[1, 2]\n',
                         "rows.jsonl:2: expected a JSON object")  # fmt: skip


@case
def jsonl_missing_field(tmp, runs):
    rows = '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n'
    return train_on_data(tmp, "rows.jsonl", rows, "rows.jsonl:2")


@case
def json_not_a_list(tmp, runs):
    return train_on_data(tmp, "rows.json", '{"prompt": "a", "response": "b"}',
                         "rows.json:1: expected a JSON list")  # fmt: skip


@case
def json_list_never_closed(tmp, runs):
    rows = '[\n{"prompt": "a", "response": "b"},\n{"prompt": "c", "response": "d"}\n'
    return train_on_data(tmp, "rows.json", rows, "rows.json:")


@case
def csv_missing_column(tmp, runs):
    return train_on_data(tmp, "rows.csv", "prompt,answer\na,b\n", "rows.csv:2")


@case
def tsv_short_row(tmp, runs):
    return train_on_data(tmp, "rows.tsv", "prompt\tresponse\na\tb\nc\n", "rows.tsv:3")


@case
def txt_empty(tmp, runs):
    return train_on_data(tmp, "rows.txt", "\n\n", "rows.txt: empty file", format="text")


@case
def not_utf8(tmp, runs):
    rows = b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n'
    return train_on_data(tmp, "rows.jsonl", rows, "rows.jsonl:2: not valid UTF-8")


@case
def unknown_extension(tmp, runs):
    return train_on_data(tmp, "rows.xlsx", b"PK\x03\x04", "unknown file extension '.xlsx'")


@case
def parquet_truncated(tmp, runs):
    return train_on_data(tmp, "rows.parquet", b"PAR1", "not a readable Parquet file")


@case
def data_file_missing(tmp, runs):
    return train_with(
        tmp, "nowhere.jsonl: no such file", data={"train": str(tmp / "nowhere.jsonl")}
    )


@case
def data_path_is_a_directory(tmp, runs):
    (tmp / "rows.jsonl").mkdir()
    return train_with(tmp, "rows.jsonl: is a directory", data={"train": str(tmp / "rows.jsonl")})


@case
def chat_messages_not_a_list(tmp, runs):
    rows = '{"messages": "hello"}\n'
    return train_on_data(tmp, "chat.jsonl", rows, "chat.jsonl:1", format="chat")


@case
def eval_file_malformed(tmp, runs):
    (tmp / "dev.jsonl").write_text('{"prompt": "a", "response": "b"}\n{oops}\n')
    return train_with(tmp, "dev.jsonl:2", data={"eval": str(tmp / "dev.jsonl")})


# ---------------------------------------------------------------- models


@case
def model_directory_missing(tmp, runs):
    return train_with(tmp, "no such model directory", model={"name": str(tmp / "nomodel")})


@case
def model_directory_without_config(tmp, runs):
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"\0" * 8)
    return train_with(tmp, "no config.json", model={"name": str(tmp / "model")})


@case
def gguf_missing(tmp, runs):
    return train_with(tmp, "no such GGUF file", model={"name": str(tmp / "m.gguf")})


@case
def gguf_garbage(tmp, runs):
    (tmp / "m.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 12)
    return train_with(tmp, "m.gguf: cannot read GGUF", model={"name": str(tmp / "m.gguf")})


@case
def unknown_random_arch(tmp, runs):
    return train_with(tmp, "random:nosuch", model={"name": "random:nosuch"})


@case
def unknown_embedded_model(tmp, runs):
    return train_with(tmp, "embedded:nosuch", model={"name": "embedded:nosuch"})


# ---------------------------------------------------------------- runs given to eval/generate/merge


@case
def eval_missing_run(tmp, runs):
    return ["eval", str(tmp / "nowhere")], "not a run directory"


@case
def eval_run_without_adapter(tmp, runs):
    import shutil

    run = copy_run(runs, "lora", tmp / "run")
    shutil.rmtree(run / "adapter")
    return ["eval", str(run)], "has no adapter/"


@case
def eval_corrupt_safetensors(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    return ["eval", str(run)], "adapter_model.safetensors"


@case
def eval_run_without_adapter_config(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    (run / "adapter" / "adapter_config.json").unlink()
    return ["eval", str(run)], "adapter_config.json"


@case
def eval_run_without_adapter_weights(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    (run / "adapter" / "adapter_model.safetensors").unlink()
    return ["eval", str(run)], "adapter"


@case
def eval_run_with_an_unknown_config_key(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    config = run / "config.yaml"
    config.write_text(config.read_text() + "extra_section: 1\n")
    return ["eval", str(run)], "extra_section: unknown key"


@case
def eval_run_config_corrupt(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    (run / "config.yaml").write_text("model: [\n")
    return ["eval", str(run)], "config.yaml:"


@case
def eval_unknown_metric_flag(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    return ["eval", str(run), "--metrics", "blue"], "unknown metric 'blue'"


@case
def eval_on_missing_data(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    return ["eval", str(run), "--data", str(tmp / "no.jsonl")], "no.jsonl: no such file"


@case
def generate_adapter_without_name(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    return ["generate", "--adapter", str(run), "-p", "hi"], "expected NAME=RUN_DIR"


@case
def generate_runs_of_two_bases(tmp, runs):
    a, b = copy_run(runs, "lora", tmp / "a"), copy_run(runs, "qwen", tmp / "b")
    return ["generate", "--adapter", f"a={a}", "--adapter", f"b={b}", "-p", "hi"], "random:qwen2"


@case
def generate_unknown_use(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    return ["generate", str(run), "--use", "other", "-p", "hi"], "no adapter named 'other'"


@case
def generate_corrupt_safetensors(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00")
    return ["generate", str(run), "-p", "hi"], "adapter_model.safetensors"


@case
def merge_prompt_tuning(tmp, runs):
    run = copy_run(runs, "prompt", tmp / "run")
    return ["merge", str(run), "--output", str(tmp / "merged")], "prompt: its trained vectors"


@case
def merge_into_the_run_itself(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    return ["merge", str(run), "--output", str(run)], "would replace the run"


@case
def merge_output_is_a_file(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    (tmp / "merged").write_text("keep me")
    return ["merge", str(run), "--output", str(tmp / "merged")], "is a file"


@case
def merge_corrupt_run(tmp, runs):
    run = copy_run(runs, "lora", tmp / "run")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    return ["merge", str(run), "--output", str(tmp / "merged")], "adapter_model.safetensors"


# ---------------------------------------------------------------- search and compare


@case
def search_without_search_section(tmp, runs):
    argv, _ = train_with(tmp, "")
    return ["search", argv[1]], "no search section"


@case
def search_unknown_space_key(tmp, runs):
    search = {"objective": {"metric": "loss", "direction": "minimize"},
              "space": {"train.lrr": {"loguniform": [1e-4, 1e-2]}}}  # fmt: skip
    return ["search", train_with(tmp, "", search=search)[0][1]], "train.lrr"


@case
def search_over_trial_runs_of_another_study(tmp, runs):
    copy_run(runs, "lora", tmp / "out" / "trials" / "trial-0000")  # study.db was deleted
    search = {"objective": {"metric": "loss", "direction": "minimize"},
              "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}  # fmt: skip
    return ["search", train_with(tmp, "", search=search)[0][1]], "--overwrite"


@case
def compare_unknown_method_flag(tmp, runs):
    path = write_yaml(tmp / "cmp.yaml", {"base": {"model": {"name": "random:llama"}},
                                         "budget_steps": 1})  # fmt: skip
    return ["compare", str(path), "--methods", "lora,lorra"], "lorra"
