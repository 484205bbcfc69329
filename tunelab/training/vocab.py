"""`model.extend_vocab` in a run: what the loop and `load_run` call, and the files it owns.

    train:    extend (tokenizer + rows, before the data is tokenised) -> write RUN/vocab/ ->
              attach (after the method: only new rows train) -> detach -> rows into adapter/
    load_run: base -> RUN/vocab/ tokenizer + adapter/new_rows.safetensors -> the method's load

RUN/vocab/ holds the extended tokenizer (transformers files) and `extension.json` (the tokens,
their original pieces, tokens per sentence before and after); it is written once, before
training, so a resumed run keeps the very same tokens. The trained rows live in the adapter
(`new_rows.safetensors`), written with the method's own files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from tunelab.errors import ConfigError, TunelabError
from tunelab.io import atomic_dir
from tunelab.models.new_rows import RowTrainer, add_rows, load_rows, rows_state
from tunelab.models.vocab import Extension, extend_tokenizer, tokens_per_text
from tunelab.run_config import RunConfig

log = logging.getLogger(__name__)
ROWS_FILE = "new_rows.safetensors"
EXTENSION_FILE = "extension.json"


def extension_on(cfg: RunConfig) -> bool:
    spec = cfg.model.extend_vocab
    return spec is not None and spec.new_tokens > 0


def check_corpus(cfg: RunConfig) -> None:
    """Before any work: a corpus file that does not exist is a one-line error."""
    spec = cfg.model.extend_vocab
    if extension_on(cfg) and spec.corpus != "train" and not Path(spec.corpus).is_file():
        raise ConfigError(f"model.extend_vocab.corpus: no such file {spec.corpus}")


def corpus_texts(cfg: RunConfig, tokenizer: Any) -> list[str]:
    """The text new tokens are learnt from: a file's rows, or the run's train responses (the
    target side; the whole text for format=text; every task's for multi-task data)."""
    spec = cfg.model.extend_vocab
    if spec.corpus != "train":
        from tunelab.models.tokenizer_report import read_texts

        return read_texts(spec.corpus, spec.field)
    from tunelab.data.build import build_datasets

    return [example.response for example in build_datasets(cfg.data, tokenizer).train]


class VocabRun:
    """The extension of one run (inactive when `model.extend_vocab` is off or N = 0)."""

    def __init__(self, cfg: RunConfig, vocab_dir: Path) -> None:
        self.cfg, self.dir = cfg, vocab_dir
        self.active = extension_on(cfg)
        self.extension: Extension | None = None
        self.figures: dict[str, Any] = {}
        self.rows: RowTrainer | None = None

    def extend(self, model, tokenizer, *, resume: bool):
        """(model, tokenizer) with the new tokens and their mean-initialised rows. A resumed run
        reads the tokenizer it started with from RUN/vocab/."""
        if not self.active:
            return model, tokenizer
        if resume and (self.dir / EXTENSION_FILE).is_file():
            extended, saved = read_vocab(self.dir, tokenizer)
            self.extension, self.figures = Extension.from_json(saved), saved["figures"]
        else:
            corpus = corpus_texts(self.cfg, tokenizer)
            spec = self.cfg.model.extend_vocab
            extended, self.extension = extend_tokenizer(tokenizer, corpus, spec.new_tokens)
            self.figures = _figures(self.cfg, tokenizer, extended, corpus, self.extension)
            log.info("vocabulary: %s", self.figures)
        add_rows(model, self.extension.new_ids, self.extension.pieces)
        self.rows = RowTrainer(self.extension.new_ids)
        return model, extended

    def write(self, tokenizer) -> None:
        if self.active:
            with atomic_dir(self.dir) as scratch:
                tokenizer.save_pretrained(str(scratch))
                payload = {**self.extension.to_json(), "figures": self.figures}
                (scratch / EXTENSION_FILE).write_text(
                    json.dumps(payload, indent=1, ensure_ascii=False)
                )

    def attach(self, model) -> None:
        if self.rows is not None:
            self.rows.attach(model)

    def param_groups(self, groups: list[dict], lr: float) -> list[dict]:
        return self.rows.param_groups(groups, lr) if self.rows is not None else groups

    def frozen_elements(self) -> int:
        return self.rows.frozen_elements() if self.rows is not None else 0

    def save_rows(self, model, directory: Path) -> None:
        """Into the adapter folder being written: the trained rows (after `detach`)."""
        if self.rows is not None:
            save_file(rows_state(model, self.extension.new_ids), str(directory / ROWS_FILE))

    def detach(self) -> None:
        if self.rows is not None:
            self.rows.detach()

    def summary(self) -> dict[str, Any] | None:
        return self.figures or None


def _figures(cfg: RunConfig, base, extended, corpus: list[str], extension: Extension) -> dict:
    """summary.json's `extend_vocab`: N asked and added, the corpus, tokens per sentence of the
    corpus before and after (the train responses when the corpus is `train`)."""
    spec = cfg.model.extend_vocab
    before, after = tokens_per_text(base, corpus), tokens_per_text(extended, corpus)
    return {
        "new_tokens": spec.new_tokens,
        "added": len(extension.tokens),
        "corpus": spec.corpus,
        "sentences": len(corpus),
        "tokens_per_sentence_before": round(before, 3),
        "tokens_per_sentence_after": round(after, 3),
        "reduction_percent": round(100.0 * (1 - after / before), 2) if before else 0.0,
        "examples": extension.tokens[:20],
    }


def read_vocab(directory: Path, base_tokenizer) -> tuple[Any, dict]:
    """(the extended tokenizer saved in RUN/vocab/, extension.json's content)."""
    from transformers import AutoTokenizer

    if not (directory / EXTENSION_FILE).is_file():
        raise TunelabError(f"{directory / EXTENSION_FILE}: missing; the run's vocabulary is lost")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None:  # as the base was loaded: pad falls back to EOS
        tokenizer.pad_token = base_tokenizer.pad_token
    return tokenizer, json.loads((directory / EXTENSION_FILE).read_text(encoding="utf-8"))


def check_vocab_files(cfg: RunConfig, run_dir: Path, adapter: Path) -> None:
    """For `read_run_config`: an extended run must carry its tokenizer and rows."""
    if not extension_on(cfg):
        return
    for path in (run_dir / "vocab" / EXTENSION_FILE, adapter / ROWS_FILE):
        if not path.is_file():
            raise TunelabError(f"{path}: missing; the run's extended vocabulary is incomplete")


def load_vocab(base, base_tokenizer, run_dir: Path, adapter: Path):
    """(base with the run's trained new rows, the run's extended tokenizer)."""
    tokenizer, _ = read_vocab(run_dir / "vocab", base_tokenizer)
    load_rows(base, load_file(str(adapter / ROWS_FILE)))
    return base, tokenizer
