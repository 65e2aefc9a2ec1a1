"""Parity statistics on real numbers: what passes, what fails, and why a near-tie does not decide it."""
from __future__ import annotations

import numpy as np
import pytest

from compressor.measure import parity


def logits(n=400, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, size=(n, classes))


def test_identical_outputs_pass_with_every_statistic():
    ref = logits()
    r = parity.compare(ref.copy(), ref, "fp32", classifier=True)
    assert r["passed"] and r["statistic"] == "relative_error" and r["value"] == 0.0
    assert r["samples"] == 400 and r["cosine_min"] == pytest.approx(1.0) and r["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert r["agreement"] == 1.0 and r["agreement_confident"] == 1.0 and 0 < r["confident_samples"] <= 400


def test_near_tie_flips_do_not_fail_parity():
    # Every input's two best logits are 1e-4 apart: an engine off by 2e-4 flips them all, the
    # top-1 agreement collapses, yet the engine computes what the model computes.
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 0.01, size=(300, 3))
    ref[:, 0] = 5.0
    ref[:, 1] = 5.0 - 1e-4
    out = ref.copy()
    out[:, 1] += 2e-4
    r = parity.compare(out, ref, "int8", classifier=True)
    assert r["agreement"] == 0.0  # every argmax flipped
    assert r["confident_samples"] == 0 and r["agreement_confident"] is None  # none was confident
    assert r["relative_error"] < 1e-4 and r["passed"]


def test_confident_agreement_counts_only_confident_inputs():
    ref = logits(seed=2)
    probs = np.exp(ref - ref.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    confident = probs.max(1) >= 0.5
    out = ref.copy()
    flip = np.flatnonzero(~confident)[:5]  # swap the top two classes on 5 unconfident inputs
    top2 = np.argsort(-ref[flip], axis=1)[:, :2]
    out[flip, top2[:, 0]], out[flip, top2[:, 1]] = ref[flip, top2[:, 1]], ref[flip, top2[:, 0]]
    r = parity.compare(out, ref, "int8", classifier=True)
    assert r["confident_samples"] == int(confident.sum())
    assert r["agreement_confident"] == 1.0 and r["agreement"] == pytest.approx(1 - 5 / 400)


def test_kl_is_the_softmax_kl_divergence():
    ref, out = np.array([[2.0, 0.0, -1.0]]), np.array([[1.0, 0.5, -1.0]])
    p = np.exp(ref) / np.exp(ref).sum()
    q = np.exp(out) / np.exp(out).sum()
    r = parity.compare(out, ref, "fp32", classifier=True)
    assert r["kl_mean"] == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-9)


def test_tolerance_follows_the_precision():
    tol = {p: parity.tolerance(p) for p in ("fp32", "fp16", "bf16", "int8", "int8_dynamic", "int4_weight_only")}
    assert tol["fp32"] < tol["fp16"] < tol["bf16"] <= tol["int8"]
    assert tol["int8_dynamic"] == tol["int8"] == tol["int4_weight_only"]
    assert 1e-6 < tol["fp32"] < 1e-4  # FP32: about 1e-5 relative


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_an_engine_off_by_more_than_its_tolerance_fails(precision):
    ref = logits(seed=3)
    rng = np.random.default_rng(4)
    noise = rng.normal(size=ref.shape)
    tol = parity.tolerance(precision)
    for scale, passes in ((0.5, True), (2.0, False)):
        out = ref + noise * (scale * tol * np.linalg.norm(ref) / np.linalg.norm(noise))
        r = parity.compare(out, ref, precision, classifier=True)
        assert r["passed"] is passes, (precision, scale, r["relative_error"], tol)


def test_embeddings_report_cosine_and_no_classifier_statistics():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(64, 384))
    out = ref + rng.normal(scale=1e-3, size=ref.shape)
    r = parity.compare(out, ref, "int8_dynamic", classifier=False)
    assert r["passed"] and 0.99999 < r["cosine_mean"] <= 1.0 and r["cosine_min"] <= r["cosine_mean"]
    assert "kl_mean" not in r and "agreement_confident" not in r


def test_nonfinite_outputs_fail_and_are_counted():
    ref = logits(n=10)
    out = ref.copy()
    out[3, 2] = np.nan
    out[7, 0] = np.inf
    r = parity.compare(out, ref, "fp32", classifier=True)
    assert not r["passed"] and r["nonfinite"] == 2 and r["value"] is None and r["max_abs"] is None
