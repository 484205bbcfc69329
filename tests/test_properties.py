"""Property-based tests (hypothesis): arbitrary bytes and strings given to the data readers and
formats, the prompt templates, config files and dotted overrides either work or raise a
`TunelabError` (one line for the CLI) — never another exception, never a traceback."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import DataConfig
from tunelab.data.formats import rows_to_examples
from tunelab.data.readers import READERS, read_rows
from tunelab.data.templates import render_prompt
from tunelab.errors import TunelabError
from tunelab.run_config import load_config

FAST = settings(max_examples=40, deadline=None, database=None,  # nothing written to the repo
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
FORMATS = ["text", "pairs", "instruction", "chat"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=12,
)
# rows that look like the real thing, with wrong types and missing keys mixed in
row_like = st.dictionaries(
    st.sampled_from(
        [
            "prompt",
            "response",
            "text",
            "instruction",
            "input",
            "output",
            "messages",
            "role",
            "content",
        ]
    ),  # fmt: skip
    json_values
    | st.lists(
        st.dictionaries(
            st.sampled_from(["role", "content"]),
            st.sampled_from(["user", "assistant", "system"]) | json_values,
        )
    ),  # fmt: skip
    max_size=5,
)


@functools.cache
def tokenizer():
    from tunelab.models.tiny import random_model

    return random_model("llama", 0)[1]


def read_and_convert(path: Path) -> None:
    """Read `path` and convert its rows with every format; only TunelabError may escape."""
    try:
        rows = read_rows(path)
    except TunelabError:
        return
    for name in FORMATS:
        try:
            rows_to_examples(rows, tokenizer(), DataConfig(format=name))
        except TunelabError:
            pass


def write(suffix: str, data: bytes) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return Path(handle.name)


@pytest.mark.parametrize("suffix", sorted(READERS))
@FAST
@given(data=st.binary(max_size=300))
def test_readers_take_arbitrary_bytes(suffix, data):
    path = write(suffix, data)
    try:
        read_and_convert(path)
    finally:
        path.unlink()


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@FAST
@given(rows=st.lists(row_like | json_values, max_size=4))
def test_readers_and_formats_take_arbitrary_json(suffix, rows):
    if suffix == ".jsonl":
        text = "\n".join(json.dumps(row) for row in rows)
    else:
        text = json.dumps(rows)
    path = write(suffix, text.encode())
    try:
        read_and_convert(path)
    finally:
        path.unlink()


@FAST
@given(template=st.text(max_size=40), prompt=st.text(max_size=40),
       system=st.none() | st.text(max_size=20))  # fmt: skip
def test_templates_take_arbitrary_strings(template, prompt, system):
    try:
        cfg = DataConfig(template=template, system_prompt=system)
        rendered = render_prompt(prompt, tokenizer(), cfg)
    except TunelabError:
        return
    assert prompt in rendered


override_text = st.text(st.characters(codec="utf-8"), max_size=30)
dotted = st.builds(
    lambda key, value: f"{key}={value}",
    st.sampled_from(
        [
            "train.lr",
            "method.r",
            "method.name",
            "data",
            "model.name.x",
            "eval.metrics",
            "train",
            "",
            "a.b.c",
            "method.target_modules",
            "output_dir",
        ]
    ),  # fmt: skip
    override_text,
)


@FAST
@given(overrides=st.lists(dotted | override_text, max_size=3))
def test_dotted_overrides_take_arbitrary_strings(overrides):
    try:
        load_config({"model": {"name": "random:llama"}}, overrides)
    except TunelabError:
        pass


@FAST
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_config_files_take_arbitrary_text(text):
    path = write(".yaml", text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path)
    except TunelabError:
        pass
    finally:
        path.unlink()
