"""How the mixed view takes its base products (`tunelab.serve.products`): the fastest way per row
count, measured on the machine; between measured sizes the size below answers; a pack no row
count uses is dropped; the server's engine measures at start and reports the table."""

from __future__ import annotations

import torch

from tunelab.serve import prepack, products
from tunelab.serve.adapters import AdapterSet
from tunelab.serve.engine import Scheduler
from tunelab.serve.mixed import Mixer, RowLinear
from tunelab.serve.products import SIZES, Products


def fake_times(layers_fastest: dict[int, str], head_fastest: dict[int, str], near: set[int]):
    """A `_time` whose fastest kind per row count is given (1 s; the others 2 s, or 0.99 s
    over `linear`'s 1 s for the row counts in `near`: within the margin)."""
    calls = []

    def timed(weights, rows, kind):
        head = weights[0][0].shape[0] == 50
        calls.append(("head" if head else "layers", rows, kind))
        fastest = (head_fastest if head else layers_fastest)[rows]
        if rows in near:
            return {"linear": 1.0}.get(kind, 0.99)
        return 1.0 if kind == fastest else 2.0

    return timed, calls


def test_measure_takes_the_fastest_way_per_row_count_and_linear_within_the_margin(monkeypatch):
    layers = [(torch.randn(8, 6), None), (torch.randn(6, 8), None)]
    head = (torch.randn(50, 6), None)
    want_layers = {n: "transposed" if 2 <= n <= 8 else "linear" for n in SIZES}
    want_head = {n: "transposed" if n >= 4 else "linear" for n in SIZES}
    timed, calls = fake_times(want_layers, want_head, near={48})  # 48: the head's only
    monkeypatch.setattr(products, "_time", timed)
    measured = products.measure(layers, head, repeats=2)
    assert measured.describe()["layers"] == want_layers
    assert measured.describe()["head"] == {**want_head, 48: "linear"}
    # the layers' products of more rows than a step's stay `linear`: not timed
    steps = [n for n in SIZES if n <= prepack.ROWS]
    assert sorted(calls) == sorted(
        [(part, n, kind) for part, sizes in (("layers", steps), ("head", SIZES))
         for n in sizes for kind in ("linear", "transposed")] * 2
    )  # fmt: skip
    # a row count between two measured sizes takes the smaller's way; past the last, the last's
    assert measured.kind(9, head=False) == "transposed"
    assert measured.kind(11, head=False) == "linear"
    assert measured.kind(500, head=True) == "transposed"
    assert measured.kind(3, head=True) == "linear"


def test_packs_are_timed_only_for_the_rows_they_serve(monkeypatch):
    weight = torch.randn(8, 6)
    pack = prepack.pack(weight) if prepack.available() else torch.zeros(1)  # only its presence
    timed, calls = fake_times(dict.fromkeys(SIZES, "packed"), dict.fromkeys(SIZES, "linear"), set())
    monkeypatch.setattr(products, "_time", timed)
    measured = products.measure([(weight, pack)], (torch.randn(50, 6), None), repeats=1)
    packed_rows = {rows for _, rows, kind in calls if kind == "packed"}
    assert packed_rows == {n for n in SIZES if prepack.FEW <= n <= prepack.ROWS}
    assert [measured.kind(n, head=False) for n in SIZES] == [
        "packed" if n in packed_rows else "linear" for n in SIZES
    ]


def test_a_real_measurement_drops_unused_packs_and_the_engine_reports_it(method_runs):
    served = AdapterSet.from_runs({"lora_a": method_runs["lora_a"]})
    mixer = Mixer(served.base, pack=prepack.available())
    measured = mixer.measure()
    tables = measured.describe()
    assert list(tables["layers"]) == list(SIZES) == list(tables["head"])
    for table in tables.values():
        for rows, kind in table.items():
            assert kind in products.KINDS
            assert kind != "packed" or prepack.FEW <= rows <= prepack.ROWS
    assert mixer.plan.products is measured
    for row in (m for m in mixer.model.modules() if isinstance(m, RowLinear)):
        kinds = tables["head" if row.head else "layers"].values()
        assert (row.packed is not None) == ("packed" in kinds)
    scheduler = Scheduler(served)
    try:
        assert scheduler.stats.products == scheduler.mixer.plan.products.describe()
        assert isinstance(scheduler.mixer.plan.products, Products)
        assert scheduler.stats.summary()["products"] == scheduler.stats.products
    finally:
        scheduler.close()
    unmeasured = Scheduler(served, measure=False)
    try:
        assert unmeasured.stats.products is None
        assert unmeasured.mixer.plan.products == products.fixed(packs=unmeasured.prepack)
    finally:
        unmeasured.close()


def test_a_replaced_base_takes_the_start_measurement_without_timing_again(method_runs, monkeypatch):
    """A new base (a run that extended the vocabulary) gets a new mixed view, built in the
    worker under the scheduler's lock: it takes the measurement made at start, not a new one."""
    served = AdapterSet.from_runs({"lora_a": method_runs["lora_a"]})
    timed = []
    real = products.measure
    monkeypatch.setattr(products, "measure", lambda *a, **k: timed.append(1) or real(*a, **k))
    scheduler = Scheduler(served)
    try:
        first = scheduler.mixer
        with scheduler.condition:
            served.base = AdapterSet.from_runs({"lora_a": method_runs["lora_a"]}).base
            mixer = scheduler._mixer()
        assert mixer is not first and mixer.base is served.base
        assert timed == [1]
        assert mixer.plan.products is first.plan.products is scheduler.measured
    finally:
        scheduler.close()
