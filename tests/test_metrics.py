"""Metric functions against values computed by hand on small cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xray.training import metrics as M

# 8 cases, threshold 0.5: TP = 0,1,7; FN = 2; FP = 4; TN = 3,5,6
Y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
P1 = np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.2, 0.7])
PROBS = np.stack([1 - P1, P1], axis=1)
LABELS = ["NORMAL", "PNEUMONIA"]


def test_binary_metrics_by_hand():
    m = M.classification_metrics(Y, PROBS, LABELS, threshold=0.5)
    for key in ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1"):
        assert m[key] == pytest.approx(0.75), key
    assert m["fpr"] == pytest.approx(0.25) and m["fnr"] == pytest.approx(0.25)
    # 15 of the 16 positive/negative pairs are ranked correctly (0.4 < 0.6 is the one miss)
    assert m["auc"] == pytest.approx(15 / 16)
    # the negative class's one-vs-rest view mirrors the positive's
    assert m["sensitivity/NORMAL"] == pytest.approx(0.75) and m["sensitivity/PNEUMONIA"] == m["sensitivity"]


def test_threshold_moves_the_decisions():
    m = M.classification_metrics(Y, PROBS, LABELS, threshold=0.35)
    # 0.4 becomes a TP, and 0.6 stays a FP: TP 4, FN 0, FP 1, TN 3
    assert m["sensitivity"] == pytest.approx(1.0)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(7 / 8)


def test_three_class_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 2, 2, 2, 0])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    matrix = M.confusion_matrix(y, pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 3]]
    m = M.classification_metrics(y, probs, ["NORMAL", "PNEUMONIA", "COVID-19"])
    assert m["accuracy"] == pytest.approx(6 / 9)
    # COVID-19: TP 3, FN 1, FP 1, TN 4
    assert m["sensitivity/COVID-19"] == pytest.approx(3 / 4)
    assert m["specificity/COVID-19"] == pytest.approx(4 / 5)
    assert m["precision/COVID-19"] == pytest.approx(3 / 4)
    assert m["f1/COVID-19"] == pytest.approx(6 / 8)
    # NORMAL: TP 1, FN 1, FP 1, TN 6
    assert m["sensitivity/NORMAL"] == pytest.approx(0.5) and m["specificity/NORMAL"] == pytest.approx(6 / 7)
    assert "sensitivity" not in m  # no single positive class with three classes
    assert m["auc"] == pytest.approx(np.mean([m["auc/NORMAL"], m["auc/PNEUMONIA"], m["auc/COVID-19"]]))


def test_expected_calibration_error_by_hand():
    # two cases at confidence 0.9 (one right) and two at 0.6 (both right): |0.5 - 0.9| and |1 - 0.6|, equal weights
    y = np.array([1, 0, 1, 1])
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.4, 0.6], [0.4, 0.6]])
    assert M.expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.4)
    bins = M.reliability_bins(y, probs, n_bins=10)
    assert sum(bins["count"]) == 4 and sorted(c for c in bins["count"] if c) == [2, 2]
    # perfectly calibrated: accuracy equals confidence in its bin
    assert M.expected_calibration_error(np.array([1, 1, 0, 1]), np.array([[0.25, 0.75]] * 4), n_bins=10) == 0.0


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 3))
    true_probs = M.softmax(logits, 2.0)
    y = (rng.uniform(size=(len(logits), 1)) > true_probs.cumsum(axis=1)).sum(axis=1)
    t = M.fit_temperature(logits, y)
    assert t == pytest.approx(2.0, abs=0.1)
    ece_raw = M.expected_calibration_error(y, M.softmax(logits))
    assert M.expected_calibration_error(y, M.softmax(logits, t)) < ece_raw / 3


def test_choose_threshold_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # 3 of 4 positives at t = 0.7 with every negative below it; halfway to the next lower score 0.6
    chosen = M.choose_threshold(y, p, min_sensitivity=0.75)
    assert chosen["threshold"] == pytest.approx(0.65)
    assert chosen["sensitivity"] == pytest.approx(0.75) and chosen["specificity"] == pytest.approx(1.0)
    # all positives needs t <= 0.4, which lets 0.6 through: specificity 2/3, threshold halfway to 0.3
    chosen = M.choose_threshold(y, p, min_sensitivity=1.0)
    assert chosen["threshold"] == pytest.approx(0.35)
    assert chosen["specificity"] == pytest.approx(2 / 3)


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(1)

    def sample(n):
        y = rng.integers(0, 2, n)
        p1 = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
        return y, np.stack([1 - p1, p1], axis=1)

    def fn(y, p):
        return M.classification_metrics(y, p, LABELS, 0.5)

    y, probs = sample(100)
    ci = M.bootstrap_ci(fn, y, probs, n_boot=200, seed=0)
    point = fn(y, probs)
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        assert ci[key][0] <= point[key] <= ci[key][1], key
    assert ci == M.bootstrap_ci(fn, y, probs, n_boot=200, seed=0)  # repeatable
    y_big, probs_big = sample(1000)
    ci_big = M.bootstrap_ci(fn, y_big, probs_big, n_boot=200, seed=0)
    assert ci_big["auc"][1] - ci_big["auc"][0] < (ci["auc"][1] - ci["auc"][0]) / 2


def test_roc_points_are_json_and_in_range():
    roc = M.roc_points(Y, P1)
    json.dumps(roc, allow_nan=False)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert all(0.0 <= t <= 1.0 for t in roc["thresholds"])
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])


def test_wilson_interval_by_hand():
    # 8/8: centre (1 + z^2/16) / (1 + z^2/8), half-width z*sqrt(z^2/256)/(1 + z^2/8) -> lower bound 0.6756
    low, high = M.wilson_interval(8, 8)
    assert low == pytest.approx(0.6756, abs=1e-4) and high == 1.0
    low, high = M.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = M.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert all(np.isnan(M.wilson_interval(0, 0)))
