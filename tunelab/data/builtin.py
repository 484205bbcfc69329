"""Builtin tasks (`builtin:NAME`): small data sets generated in code, with exact answers.

They let a run, a test or a demo show learning without any download: each task is easy for a
small model to learn in a few hundred LoRA steps on CPU, yet a base instruct model of ~135M
parameters mostly gets it wrong, so the before/after difference in exact-match accuracy is
large and fast to measure. Every generator takes a seeded `random.Random` and returns one
(prompt, response) pair; the same seed gives the same rows on every machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator

from tunelab.errors import DataError

WORDS = (
    "apple river stone cloud tiger garden window candle forest bread silver music "
    "mountain pencil ocean rabbit lemon castle winter bottle dragon planet coffee "
    "mirror feather island rocket violin basket honey"
).split()
NAMES = "Alice Bongani Chen Diego Emma Farah Hiro Ines Jonas Kofi Lena Mateo Nia Omar Priya".split()
CITIES = "Paris Lagos Tokyo Lima Cairo Oslo Delhi Quito Seoul Rome Nairobi Berlin Hanoi".split()


def reverse_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"Reverse the order of the words: {' '.join(words)}", " ".join(reversed(words))


def add_numbers(rng: random.Random) -> tuple[str, str]:
    first, second = rng.randint(10, 99), rng.randint(10, 99)
    return f"Add the numbers: {first} + {second}", str(first + second)


def sort_numbers(rng: random.Random) -> tuple[str, str]:
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    shown = " ".join(map(str, numbers))
    return f"Sort the numbers in ascending order: {shown}", " ".join(map(str, sorted(numbers)))


def record_to_json(rng: random.Random) -> tuple[str, str]:
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(CITIES)
    prompt = f"Turn this record into a compact JSON object: name: {name}; age: {age}; city: {city}"
    answer = json.dumps({"name": name, "age": age, "city": city}, separators=(",", ":"))
    return prompt, answer


BUILTIN_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": reverse_words,
    "add": add_numbers,
    "sort": sort_numbers,
    "json": record_to_json,
}
PREFIX = "builtin:"
PATIENCE = 10_000  # repeated prompts in a row before a task counts as exhausted


def is_builtin(spec: str) -> bool:
    return spec.startswith(PREFIX)


def builtin_pairs(spec: str, seed: int) -> Iterator[tuple[str, str]]:
    """Distinct (prompt, response) pairs of task `builtin:NAME`, the same sequence for the same
    seed; ends when the task runs out of new prompts (a task has finitely many)."""
    name = spec.removeprefix(PREFIX)
    generate = BUILTIN_TASKS.get(name)
    if generate is None:
        known = ", ".join(PREFIX + task for task in BUILTIN_TASKS)
        raise DataError(f"{spec}: unknown builtin task; known: {known}")
    rng = random.Random(f"{name}:{seed}")
    seen: set[str] = set()
    misses = 0
    while misses < PATIENCE:
        prompt, response = generate(rng)
        if prompt in seen:
            misses += 1
            continue
        seen.add(prompt)
        misses = 0
        yield prompt, response
