"""Run an exported GGUF file with llama.cpp itself (through llama-cpp-python) and compare it with
the merged run in transformers: token ids of a multilingual sample, next-token logits on each
sample, and the greedy continuation of a chat prompt, token for token.

    pip install --target /tmp/llcpp llama-cpp-python    # builds llama.cpp (minutes); not a
                                                         # tunelab dependency
    PYTHONPATH=/tmp/llcpp python benchmarks/export_llamacpp.py RUN FILE.gguf [--tokens 24]

Prints one line per check and, last, `llamacpp_ids_equal=… greedy_equal=… max_logit_diff=…`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tunelab.export.merge import merged_model

SAMPLE = [
    "hello world, exported in 2026",
    "Molo! Unjani namhlanje? Ndiyabulela kakhulu. Abantwana bafunda iincwadi ezili-12.",
    "Ça va très bien 😊 — ñandú, straße",
]
PROMPT = "Translate into isiXhosa: Good morning, my friend."


def llama_cpp_model(path: Path):
    from llama_cpp import Llama  # installed apart from tunelab (see the module doc)

    return Llama(model_path=str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)


def last_logits_llama_cpp(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)


def greedy_llama_cpp(llm, ids: list[int], steps: int) -> list[int]:
    """Greedy tokens up to `steps` or the first EOS (included), as transformers stops."""
    llm.reset()
    out = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == steps or token == llm.token_eos():
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    merged, tokenizer, _ = merged_model(args.run)
    llm = llama_cpp_model(args.gguf)
    ids_equal, worst = True, 0.0
    for text in SAMPLE:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        ids_equal &= theirs == ids
        with torch.no_grad():
            ours = merged(torch.tensor([ids])).logits[0, -1].numpy()
        diff = float(np.abs(last_logits_llama_cpp(llm, ids) - ours).max())
        worst = max(worst, diff)
        print(f"ids equal={theirs == ids} max|Δlogit|={diff:.2e} range={np.ptp(ours):.1f}: {text}")
    messages = [{"role": "user", "content": PROMPT}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = merged.generate(torch.tensor([ids]), max_new_tokens=args.tokens, do_sample=False)
    reference = out[0, len(ids) :].tolist()
    theirs = greedy_llama_cpp(llm, ids, args.tokens)
    print(f"prompt: {prompt!r}")
    print("transformers:", repr(tokenizer.decode(reference)))
    print("llama.cpp:   ", repr(tokenizer.decode(theirs)))
    pairs = zip(reference, theirs, strict=False)
    same = next((i for i, (a, b) in enumerate(pairs) if a != b), len(theirs))
    print(f"llamacpp_ids_equal={ids_equal} greedy_equal={reference == theirs} "
          f"greedy_common_prefix={same}/{len(reference)} max_logit_diff={worst:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
