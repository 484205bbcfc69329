"""Generation: left-padded batches equal one-by-one greedy decoding, order and modes are
restored, EOS stops, and PEFT wrappers (LoRA and prompt learning) decode as they train."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from tokenizers import processors

from tunelab.evaluate import generate

PROMPTS = ["hello world, a longer prompt", "hi", "abc def", "x", "fifth?"]
NEW = 8


def one_by_one(model, tokenizer, prompts):
    return [generate(model, tokenizer, [p], max_new_tokens=NEW, batch_size=1)[0] for p in prompts]


def greedy_by_hand(model, tokenizer, prompt: str) -> str:
    """Reference decoding: full forward pass per token, argmax, stop at EOS."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(NEW):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            token = int(logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_batched_equals_one_by_one(tiny):
    model, tokenizer = tiny
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=3)
    assert batched == one_by_one(model, tokenizer, PROMPTS)
    assert len(set(batched)) == len(PROMPTS)  # the model does not just echo one thing
    assert batched[1] == greedy_by_hand(model, tokenizer, PROMPTS[1])


def test_order_restored_and_tokenizer_untouched(tiny):
    model, tokenizer = tiny
    tokenizer.padding_side = "right"
    forward = generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=2)
    backward = generate(model, tokenizer, PROMPTS[::-1], max_new_tokens=NEW, batch_size=2)
    assert backward == forward[::-1]
    assert tokenizer.padding_side == "right"
    assert generate(model, tokenizer, [], max_new_tokens=NEW, batch_size=2) == []


def test_training_flags_restored(fresh):
    model, tokenizer = fresh
    model.train()
    model.model.layers[0].eval()  # a module deliberately in eval mode stays so
    generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2, batch_size=2)
    assert model.training and model.model.layers[1].training
    assert not model.model.layers[0].training
    assert torch.is_grad_enabled()


def test_stops_at_eos(fresh):
    model, tokenizer = fresh
    eos = tokenizer.eos_token_id

    def favour_eos(module, inputs, output):
        output[..., eos] += 1e4
        return output

    model.lm_head.register_forward_hook(favour_eos)
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=2) == [""] * 5


def test_empty_prompt_and_no_pad_token(fresh):
    model, tokenizer = fresh
    tokenizer.pad_token = None  # EOS pads instead
    prompts = ["", "abc def", "x"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=NEW, batch_size=3)
    assert batched == one_by_one(model, tokenizer, prompts)


def test_prompts_get_the_bos_the_training_data_gets(fresh):
    """A tokenizer that prepends BOS to text (Gemma's): generation sees BOS + prompt, as the
    training data does (tunelab.data.tokenize), and a prompt holding its BOS keeps one."""
    model, tokenizer = fresh
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    seen = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    generate(model, tokenizer, ["hi", f"{bos}hi"], max_new_tokens=1, batch_size=1)
    expected = tokenizer("hi")["input_ids"]
    assert expected[0] == tokenizer.bos_token_id
    assert seen == [expected, expected]


def test_lora_wrapped_model(fresh, tiny):
    model, tokenizer = fresh
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    wrapped = get_peft_model(model, config)
    wrapped.train()
    batched = generate(wrapped, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=3)
    assert wrapped.training
    assert batched == one_by_one(wrapped, tokenizer, PROMPTS)
    base = generate(tiny[0], tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=3)
    assert batched != base  # the adapter takes part


@pytest.mark.parametrize("config_type", [PromptTuningConfig, PrefixTuningConfig])
def test_prompt_learning_decodes_like_its_forward_pass(fresh, config_type):
    model, tokenizer = fresh
    wrapped = get_peft_model(model, config_type(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))
    wrapped.eval()
    prompts = ["hello world", "abc def", "xyz", "hi!"]  # two share a length: a real batch
    batched = generate(wrapped, tokenizer, prompts, max_new_tokens=NEW, batch_size=4)
    assert batched == [greedy_by_hand(wrapped, tokenizer, prompt) for prompt in prompts]


def test_progress_bar_changes_nothing(tiny):
    model, tokenizer = tiny
    quiet = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=3, batch_size=2)
    shown = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=3, batch_size=2, progress=True)
    assert shown == quiet


def test_decoding_options_reach_generate(monkeypatch):
    """`no_repeat_ngram_size` and `repetition_penalty` are passed to the model's generate."""
    from tunelab.evaluate import generate
    from tunelab.models.tiny import random_model

    model, tokenizer = random_model("llama", seed=0)
    seen, produced = {}, []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        tokens = original(self, *args, **kwargs)
        produced.extend(tokens[:, kwargs["input_ids"].shape[1] :].tolist())
        return tokens

    monkeypatch.setattr(type(model), "generate", spy)
    generate(model, tokenizer, ["abc", "de"], max_new_tokens=12, batch_size=2,
             no_repeat_ngram_size=2, repetition_penalty=1.3)  # fmt: skip
    assert seen["no_repeat_ngram_size"] == 2 and seen["repetition_penalty"] == 1.3
    for row in produced:  # the default tiny model repeats itself; here no bigram comes twice
        row = [t for t in row if t != tokenizer.pad_token_id]
        pairs = list(zip(row, row[1:], strict=False))
        assert len(pairs) == len(set(pairs))
