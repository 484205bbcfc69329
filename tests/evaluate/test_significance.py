"""Bootstrap intervals and the paired test against brute force: the same resampled sentence
lists scored with sacrebleu's public `corpus_score`, and the sign/size conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu

from tunelab.evaluate.generation_report import compare_runs, compare_samples, generation_report
from tunelab.evaluate.significance import (
    bootstrap_interval,
    paired_bootstrap,
    resample_indices,
    signature,
)

REFERENCES = [
    "Umntwana uyadlala phandle.",
    "Sifuna amanzi acocekileyo.",
    "Utitshala ufundisa abantwana.",
    "Imvula iza kuna ngomso.",
    "Abantu bahamba ngebhasi.",
    "Inja ilele phantsi komthi.",
    "Umama upheka ukutya.",
]
WEAK = ["Umntu", "Sifuna amanzi", "Utitshala", "Imvula imvula imvula", "bahamba", "", "Umama"]
STRONG = [
    "Umntwana udlala phandle.",
    "Sifuna amanzi acocekileyo.",
    "Utitshala ufundisa abantwana.",
    "Imvula iza kuna.",
    "Abantu bahamba ngebhasi.",
    "Inja ilele phantsi.",
    "Umama upheka.",
]
PUBLIC = {
    "chrf": lambda h, r: sacrebleu.corpus_chrf(h, [r], char_order=6, word_order=0).score,
    "chrf++": lambda h, r: sacrebleu.corpus_chrf(h, [r], char_order=6, word_order=2).score,
    "bleu": lambda h, r: sacrebleu.corpus_bleu(h, [r]).score,
}


def brute_force_scores(name, predictions, references, indices):
    """Each resample scored from scratch by sacrebleu's public corpus scorer."""
    score = PUBLIC[name]
    return np.array(
        [score([predictions[i] for i in row], [references[i] for i in row]) for row in indices]
    )


@pytest.mark.parametrize("name", ["chrf", "chrf++", "bleu"])
def test_interval_equals_percentiles_of_brute_force_resamples(name):
    indices = resample_indices(len(REFERENCES), 200, seed=3)
    scores = brute_force_scores(name, STRONG, REFERENCES, indices)
    interval = bootstrap_interval(name, STRONG, REFERENCES, resamples=200, seed=3)
    assert interval.score == pytest.approx(PUBLIC[name](STRONG, REFERENCES))
    assert interval.low == pytest.approx(np.percentile(scores, 2.5))
    assert interval.high == pytest.approx(np.percentile(scores, 97.5))
    assert interval.low <= interval.score <= interval.high
    assert interval.low < interval.high  # the sentences differ, so the resamples do


def test_paired_test_against_brute_force_and_its_conventions():
    indices = resample_indices(len(REFERENCES), 300, seed=0)
    weak = brute_force_scores("chrf++", WEAK, REFERENCES, indices)
    strong = brute_force_scores("chrf++", STRONG, REFERENCES, indices)
    deltas = strong - weak
    spread = np.abs(deltas)
    observed = PUBLIC["chrf++"](STRONG, REFERENCES) - PUBLIC["chrf++"](WEAK, REFERENCES)
    expected_p = (np.sum(spread - spread.mean() >= abs(observed)) + 1) / (len(deltas) + 1)
    result = paired_bootstrap("chrf++", WEAK, STRONG, REFERENCES, resamples=300, seed=0)
    assert result.delta == pytest.approx(observed) and result.delta > 0  # delta = system - base
    assert (result.low, result.high) == pytest.approx(tuple(np.percentile(deltas, [2.5, 97.5])))
    assert result.p_value == pytest.approx(expected_p)
    assert result.p_value < 0.05 and result.low > 0  # a clear gain is significant
    same = paired_bootstrap("chrf++", STRONG, STRONG, REFERENCES, resamples=300, seed=0)
    assert same.delta == 0 and same.low == same.high == 0 and same.p_value == 1.0


def test_seeded_and_checked():
    first = bootstrap_interval("chrf", WEAK, REFERENCES, resamples=50, seed=1)
    assert bootstrap_interval("chrf", WEAK, REFERENCES, resamples=50, seed=1) == first
    assert bootstrap_interval("chrf", WEAK, REFERENCES, resamples=50, seed=2) != first
    with pytest.raises(ValueError, match="references"):
        bootstrap_interval("chrf", WEAK[:3], REFERENCES)
    with pytest.raises(ValueError, match="no bootstrap"):
        bootstrap_interval("rougeL", WEAK, REFERENCES)


def test_signature_is_sacrebleus():
    assert signature("chrf++").startswith("chrF2++|nrefs:1|case:mixed|eff:yes|nc:6|nw:2")
    assert signature("chrf").startswith("chrF2|nrefs:1|") and "nw:0" in signature("chrf")
    assert signature("bleu").startswith("BLEU|nrefs:1|") and "tok:13a" in signature("bleu")
    assert signature("bleu").endswith(f"version:{sacrebleu.__version__}")


def samples(predictions):
    return [
        {"prompt": f"p{i}", "reference": ref, "prediction": pred}
        for i, (pred, ref) in enumerate(zip(predictions, REFERENCES, strict=True))
    ]


def test_report_holds_intervals_paired_test_signatures_and_repetition_warning(caplog):
    looping = [*STRONG[:-1], "upheka upheka upheka upheka upheka upheka upheka upheka"]
    report = generation_report(
        samples(WEAK), samples(looping), ["loss", "chrf++", "bleu"], resamples=100, seed=0
    )
    assert set(report["signatures"]) == {"chrf++", "bleu"}
    assert report["bootstrap"]["resamples"] == 100 and report["examples"] == len(REFERENCES)
    assert report["after"]["chrf++"]["score"] == pytest.approx(
        PUBLIC["chrf++"](looping, REFERENCES)
    )
    assert report["paired"]["chrf++"]["delta"] == pytest.approx(
        report["after"]["chrf++"]["score"] - report["before"]["chrf++"]["score"]
    )
    assert report["after"]["seq-rep-4"] == pytest.approx(100 * (1 - 1 / 5) / len(REFERENCES))
    assert report["warnings"] == []  # one looping output of seven is under the threshold
    heavy = generation_report(None, samples(["a b c a b c a b c"] * 7), ["chrf"], resamples=10)
    assert "before" not in heavy and "paired" not in heavy
    assert len(heavy["warnings"]) == 1 and heavy["warnings"][0].startswith("after: outputs repeat")
    assert heavy["warnings"][0] in caplog.text  # logged by the library


def test_compare_samples_refuses_different_examples():
    other = samples(WEAK)
    other[0]["prompt"] = "something else"
    with pytest.raises(ValueError, match="same examples"):
        compare_samples(samples(WEAK), other, ["chrf"])


def test_compare_runs_reads_both_runs_samples(tmp_path):
    for name, predictions in (("a", WEAK), ("b", STRONG)):
        (tmp_path / name).mkdir()
        lines = [json.dumps(sample) for sample in samples(predictions)]
        (tmp_path / name / "samples-after.jsonl").write_text("\n".join(lines) + "\n")
    result = compare_runs(tmp_path / "a", tmp_path / "b", ["chrf++"], resamples=100)
    expected = paired_bootstrap("chrf++", WEAK, STRONG, REFERENCES, resamples=100, seed=0)
    assert result == {"chrf++": expected.as_dict()}
    with pytest.raises(ValueError, match="no samples-after"):
        compare_runs(tmp_path / "a", tmp_path / "missing")
