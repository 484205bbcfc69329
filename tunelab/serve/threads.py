"""One OpenMP thread pool in the serving process: the engine worker's.

torch's CPU wheels parallelise with GNU OpenMP (libgomp), which keeps a pool of helper threads
for every thread that ever ran a parallel region, until that thread exits. With two pools in a
process there are more threads than cores, and libgomp then stops spinning at its barriers: each
parallel region of a decoding step sleeps and wakes through the kernel (and, on a shared VM,
gives its core back to the host). Measured on SmolLM2, two cores: an 8-row decoding step in a
second thread after the model was loaded in the main thread took 300-500 ms against 110-125 ms
with one pool, using 0.6 of the 2 cores instead of 1.5-1.9; `tunelab serve` under 8 clients gave
1.9-2.3x the tokens/s once its main thread kept no pool (interleaved A/B, same host, same minutes).

So the server does its other torch work — loading the base and the runs at start, packing the
weights, building a run for an admin load — in a short-lived thread of its own (`apart`), whose
pool ends with it, and only the engine's worker keeps one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def apart(work: Callable[..., T], *args, **kwargs) -> T:
    """`work(*args, **kwargs)` in a new thread that ends with it: its result, or its exception
    raised here."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work(*args, **kwargs)
        except BaseException as error:  # handed to the caller, who decides
            outcome["error"] = error

    name = f"tunelab-apart-{getattr(work, '__name__', 'work')}"
    thread = threading.Thread(target=run, name=name, daemon=True)  # Ctrl-C need not wait
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
