"""Operating point from the validation ROC: hand-computed sensitivity, specificity, PPV and NPV."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xray.errors import OperatingPointError
from xray.trust.operating import describe, operating_point, roc_from_metrics, roc_population, validation_prevalence

# As scikit-learn's roc_curve returns it: thresholds decreasing, the first one (infinity) clipped to 1.
ROC = {"fpr": [0.0, 0.0, 0.1, 0.5, 1.0], "tpr": [0.0, 0.5, 0.8, 0.95, 1.0], "thresholds": [1.0, 0.9, 0.6, 0.3, 0.01]}


def test_at_a_stored_point() -> None:
    p = operating_point(ROC, 0.6, 0.2)
    assert (p.sensitivity, p.specificity) == pytest.approx((0.8, 0.9))
    # PPV = 0.8*0.2 / (0.8*0.2 + 0.1*0.8) = 0.16/0.24; NPV = 0.9*0.8 / (0.9*0.8 + 0.2*0.2) = 0.72/0.76
    assert p.ppv == pytest.approx(2 / 3)
    assert p.npv == pytest.approx(0.72 / 0.76)


def test_interpolated_between_points() -> None:
    p = operating_point(ROC, 0.75, 0.5)  # halfway between 0.6 (0.8, fpr 0.1) and 0.9 (0.5, fpr 0)
    assert p.sensitivity == pytest.approx(0.65)
    assert p.specificity == pytest.approx(0.95)
    assert p.ppv == pytest.approx(0.65 / (0.65 + 0.05))
    assert p.npv == pytest.approx(0.95 / (0.95 + 0.35))


def test_extremes() -> None:
    top = operating_point(ROC, 1.0, 0.3)
    assert (top.sensitivity, top.specificity) == (0.0, 1.0)
    assert math.isnan(top.ppv) and top.npv == pytest.approx(0.7)
    bottom = operating_point(ROC, 0.0, 0.3)
    assert (bottom.sensitivity, bottom.specificity) == (1.0, 0.0)
    assert bottom.ppv == pytest.approx(0.3) and math.isnan(bottom.npv)


def test_prevalence_moves_ppv_not_sensitivity() -> None:
    low, high = operating_point(ROC, 0.6, 0.05), operating_point(ROC, 0.6, 0.5)
    assert low.sensitivity == high.sensitivity and low.specificity == high.specificity
    assert low.ppv < high.ppv and low.npv > high.npv


def test_sklearn_roc_through_json_round_trip() -> None:
    """An ROC as xray.training.metrics.roc_points stores it, read back from JSON, agrees with counting."""
    from xray.training.metrics import roc_points

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    roc = json.loads(json.dumps(roc_points(y, p)))
    for t in roc["thresholds"][1:-1]:  # at a stored threshold the rates are exact
        point = operating_point(roc, t, 0.4)
        assert point.sensitivity == pytest.approx(((p >= t) & (y == 1)).sum() / (y == 1).sum())
        assert point.specificity == pytest.approx(((p < t) & (y == 0)).sum() / (y == 0).sum())


def test_unsorted_duplicates_and_infinity_are_handled() -> None:
    roc = {"fpr": [0.5, 0.0, 0.0, 0.2], "tpr": [0.9, 0.0, 0.4, 0.7], "thresholds": [0.2, None, 1.0, 0.5]}
    assert operating_point(roc, 1.0, 0.5).sensitivity == pytest.approx(0.4)  # a real score at exactly 1.0
    assert operating_point(roc, 0.5, 0.5).sensitivity == pytest.approx(0.7)


@pytest.mark.parametrize(("threshold", "prevalence"), [(-0.1, 0.2), (1.5, 0.2), (0.5, 1.2), ("x", 0.2), (0.5, None)])
def test_out_of_range_inputs(threshold, prevalence) -> None:
    with pytest.raises(OperatingPointError, match="between 0 and 1"):
        operating_point(ROC, threshold, prevalence)


def test_malformed_roc() -> None:
    with pytest.raises(OperatingPointError, match="fpr"):
        operating_point({"fpr": [0, 1]}, 0.5, 0.1)
    with pytest.raises(OperatingPointError, match="at least two points"):
        operating_point({"fpr": [0.0], "tpr": [0.0], "thresholds": [1.0]}, 0.5, 0.1)


def test_roc_from_metrics() -> None:
    assert roc_from_metrics({"validation": {"roc": ROC}}) == ROC
    per_class = {"validation": {"roc": {"NORMAL": ROC, "COVID-19": ROC}}}
    assert roc_from_metrics(per_class, "COVID-19") == ROC
    with pytest.raises(OperatingPointError, match="choose one"):
        roc_from_metrics(per_class)
    with pytest.raises(OperatingPointError, match="no validation ROC"):
        roc_from_metrics({})


def test_a_populations_own_roc_is_used_when_stored_else_the_pooled_one() -> None:
    children = {"fpr": [0.0, 0.05, 1.0], "tpr": [0.0, 0.95, 1.0], "thresholds": [1.0, 0.8, 0.0]}
    metrics = {"validation": {"roc": ROC},
               "population_thresholds": {"populations": {"children": {"n": 745, "roc": children},
                                                         "adults": {"n": 132}}}}  # fmt: skip
    assert roc_from_metrics(metrics, population="children") == children
    assert roc_from_metrics(metrics, population="adults") == ROC  # stored without an ROC: pooled
    assert roc_from_metrics(metrics) == ROC
    assert roc_population(metrics, "children") == ("children", 745)
    assert roc_population(metrics, "adults") == (None, None) and roc_population(metrics, None) == (None, None)
    text = describe(operating_point(children, 0.8, 0.1), "pneumonia", "children", 745)
    assert text.startswith("At threshold 0.800, on the validation images of children (745): sensitivity 95.0%")


def test_validation_prevalence_and_text() -> None:
    metrics = {"data": {"split_counts": {"val": {"NORMAL": 200, "PNEUMONIA": 600, "groups": 700}}}}
    assert validation_prevalence(metrics, "PNEUMONIA") == pytest.approx(0.75)
    assert validation_prevalence({}, "PNEUMONIA") is None
    text = describe(operating_point(ROC, 0.6, 0.2), "pneumonia")
    assert "sensitivity 80.0%" in text and "specificity 90.0%" in text and "66.7%" in text and "20%" in text
    assert text.startswith("At threshold 0.600,")


def test_one_threshold_format() -> None:
    from xray.trust.operating import format_threshold, shown_threshold

    assert format_threshold(0.5405062291772469) == "0.541" and format_threshold(0.5) == "0.500"
    assert shown_threshold(0.5405062291772469) == 0.541
