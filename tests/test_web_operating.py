"""xray.web.operating: the operating point from the validation ROC."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.web_cases import diagnose_upload as _diagnose
from xray.records import crud
from xray.trust.operating import operating_point
from xray.web import operating, registry

# A validation ROC as xray.training.metrics stores it (thresholds decreasing, the first clipped to 1).
ROC = {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0], "thresholds": [1.0, 0.7, 0.4, 0.0]}


@pytest.fixture(scope="module")
def model_with_roc(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with a metrics.json holding a validation ROC and split counts."""
    folder = tmp_path_factory.mktemp("roc") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    metrics = {"validation": {"roc": ROC}, "data": {"split_counts": {"val": {"NORMAL": 300, "PNEUMONIA": 100}}}}
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return f"local-dir:{folder}"


def test_operating_point_defaults_and_markdown(session, store, doctors, model_with_roc, tiny_model_dir_3class):
    alice, _ = doctors
    info = registry.describe_model(model_with_roc)
    defaults = operating.operating_defaults(info)
    assert defaults.available and defaults.threshold == 0.5 and defaults.positive_label == "PNEUMONIA"
    # a realistic start, not the validation set's 100 of 400 images
    assert defaults.prevalence == operating.DEFAULT_PREVALENCE and defaults.validation_prevalence == pytest.approx(0.25)
    record = _diagnose(session, store, alice, model_with_roc).record
    p = record.probabilities["PNEUMONIA"]
    expected = operating_point(ROC, 0.4, 0.1)
    text = operating.operating_markdown(info, 0.4, 0.1, record)
    assert f"sensitivity {expected.sensitivity:.1%}" in text and f"specificity {expected.specificity:.1%}" in text
    assert f"right {expected.ppv:.1%} of the time (PPV), a negative one {expected.npv:.1%} (NPV)" in text
    # The verdict follows the slider from the stored probability (just below and just above it).
    below = operating.operating_markdown(info, max(0.0, p - 0.01), 0.25, record)
    above = operating.operating_markdown(info, min(1.0, p + 0.01), 0.25, record)
    assert "current result is PNEUMONIA" in below and "current result is NORMAL" in above
    assert crud.get_record(session, doctor=alice, record_id=record.id).predicted_label == record.predicted_label
    with pytest.raises(Exception, match="between 0 and 1"):
        operating.operating_markdown(info, 1.5, 0.25, record)
    # Not offered without a validation ROC, nor for three-class models.
    assert not operating.operating_defaults(registry.describe_model(f"local-dir:{tiny_model_dir_3class}")).available
    bare = operating.operating_defaults(registry.ModelInfo(name="x", label_names=["A", "B"], threshold=0.5,
                                                      positive_label="B"))  # fmt: skip
    assert not bare.available and "no validation ROC" in bare.reason


def test_prevalence_starts_realistic_and_says_why():
    """The bundled model: not its validation set's 74% (PPV 99%), an assumed 10% said in the text and the box."""
    from xray.trust.operating import validation_prevalence

    info = registry.describe_model("pneumonia")
    defaults = operating.operating_defaults(info)
    val = validation_prevalence(info.metrics, "PNEUMONIA")
    assert val > 0.7 and defaults.prevalence == operating.DEFAULT_PREVALENCE == 0.10
    text = operating.operating_markdown(info, defaults.threshold, defaults.prevalence)
    assert "If 10% of patients have PNEUMONIA" in text
    assert "The box starts at 10%, an assumption" in text and f"not the validation set's {val:.0%}" in text
    assert "enter your own" in operating.PREVALENCE_INFO and "10%" in operating.PREVALENCE_INFO
    ppv = operating_point(ROC, 0.4, defaults.prevalence).ppv
    assert ppv < operating_point(ROC, 0.4, val).ppv  # the point of it: PPV is not flattered


def test_threshold_is_shown_one_way_everywhere():
    """The bundled model's exact threshold (0.54705...) shown one way (0.547): slider, texts, Models page, card."""
    from xray.records.db import Record
    from xray.trust.operating import format_threshold
    from xray.web import models_page, views

    info = registry.describe_model("pneumonia")
    exact = info.threshold
    shown = format_threshold(exact)
    assert len(shown) == 5 and str(exact) != shown  # three decimals, and the exact value has more
    defaults = operating.operating_defaults(info)
    assert defaults.threshold == float(shown)  # the slider starts at what the text says
    assert f"At threshold {shown}," in operating.operating_markdown(info, defaults.threshold, 0.1)
    assert f"threshold {shown}." in views.prediction_summary("PNEUMONIA", {"PNEUMONIA": 0.9, "NORMAL": 0.1}, exact,
                                                             "PNEUMONIA")  # fmt: skip
    rows = models_page.metric_rows(models_page.read_entries(["pneumonia"]))
    assert {r[3] for r in rows} == {f"threshold {shown}"}
    card = (models_page.read_entry("pneumonia")).card
    assert f"P(PNEUMONIA) = {shown}" in card and f">= {shown}" in card
    for wrong in (f"{exact:.2f} ", f"{exact:.4f}", f"{exact:.6f}"):
        assert wrong not in operating.operating_markdown(info, defaults.threshold, 0.1)
    # at the shown start the verdict is the model's own, even for a probability between the exact and shown values
    p = (exact + float(shown)) / 2
    own = "PNEUMONIA" if p >= exact else "NORMAL"
    record = Record(model_name=info.name, label_names=["NORMAL", "PNEUMONIA"], positive_label="PNEUMONIA",
                    probabilities={"NORMAL": 1 - p, "PNEUMONIA": p}, predicted_label=own)  # fmt: skip
    text = operating.operating_markdown(info, defaults.threshold, 0.1, record)
    assert f"current result is {own}" in text and "the model's own threshold gave" not in text


def test_a_record_decided_at_its_populations_threshold_names_it_under_another_threshold():
    from xray.records.db import Record

    info = registry.describe_model("pneumonia")
    record = Record(model_name=info.name, label_names=["NORMAL", "PNEUMONIA"], positive_label="PNEUMONIA",
                    probabilities={"NORMAL": 0.7, "PNEUMONIA": 0.3}, predicted_label="PNEUMONIA", threshold=0.113,
                    population="adults", population_reason="chosen by the doctor")  # fmt: skip
    text = operating.operating_markdown(info, 0.541, 0.1, record)
    assert "current result is NORMAL" in text and "(its threshold 0.113 for adults gave PNEUMONIA)" in text
    assert "current result is PNEUMONIA" in operating.operating_markdown(info, 0.113, 0.1, record)


def test_a_records_population_is_judged_on_that_populations_validation_roc(model_with_roc, tmp_path):
    """Expected sensitivity and specificity for a child come from the children's validation ROC, when stored."""
    from xray.records.db import Record

    folder = tmp_path / "tiny"
    shutil.copytree(model_with_roc.removeprefix("local-dir:"), folder)
    children = {"fpr": [0.0, 0.02, 1.0], "tpr": [0.0, 0.97, 1.0], "thresholds": [1.0, 0.4, 0.0]}
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["population_thresholds"] = {"populations": {"children": {"n": 700, "roc": children}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    info = registry.describe_model(f"local-dir:{folder}")
    record = Record(model_name=info.name, label_names=["NORMAL", "PNEUMONIA"], positive_label="PNEUMONIA",
                    probabilities={"NORMAL": 0.7, "PNEUMONIA": 0.3}, predicted_label="NORMAL", threshold=0.4,
                    population="children", population_reason="from the DICOM age 4 years")  # fmt: skip
    child = operating_point(children, 0.4, 0.1)
    text = operating.operating_markdown(info, 0.4, 0.1, record)
    assert text.startswith("At threshold 0.400, on the validation images of children (700): ")
    assert f"sensitivity {child.sensitivity:.1%}, specificity {child.specificity:.1%}" in text
    pooled = operating_point(ROC, 0.4, 0.1)
    assert f"sensitivity {pooled.sensitivity:.1%}" not in text
    # an adult (no adults' ROC stored) and no record at all: the pooled validation ROC, said as such
    adult = Record(**{**record.model_dump(exclude={"id"}), "population": "adults"})
    for text in (operating.operating_markdown(info, 0.4, 0.1, adult), operating.operating_markdown(info, 0.4, 0.1)):
        assert text.startswith("At threshold 0.400, on validation data: ")
        assert f"sensitivity {pooled.sensitivity:.1%}, specificity {pooled.specificity:.1%}" in text


def test_a_new_result_starts_the_panel_at_the_threshold_that_decided_it(session, store, doctors, model_with_roc,
                                                                         tmp_path):  # fmt: skip
    """A child decided at the children's 0.400 starts the slider there; another doctor's record or none: the model's."""
    alice, bob = doctors
    folder = tmp_path / "tiny"
    shutil.copytree(model_with_roc.removeprefix("local-dir:"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["thresholds"] = {"children": 0.4, "adults": 0.55}
    (folder / "config.json").write_text(json.dumps(config))
    children = {"fpr": [0.0, 0.02, 1.0], "tpr": [0.0, 0.97, 1.0], "thresholds": [1.0, 0.4, 0.0]}
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["population_thresholds"] = {"populations": {"children": {"n": 700, "roc": children}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    model = f"local-dir:{folder}"
    info = registry.describe_model(model)
    record = _diagnose(session, store, alice, model, population="Child").record
    assert (record.population, record.threshold) == ("children", 0.4)

    threshold, text = operating.start_for_record(session, doctor=alice, info=info, prevalence=0.1, record_id=record.id)
    assert threshold == 0.4
    assert text.startswith("At threshold 0.400, on the validation images of children (700): ")
    assert f"the current result is {record.predicted_label}**" in text and "gave" not in text
    # another doctor's record, none on screen, another model's record: the model's own threshold, no verdict
    for doctor, record_id, other in ((bob, record.id, info), (alice, None, info)):
        threshold, text = operating.start_for_record(session, doctor=doctor, info=other, prevalence=0.1,
                                                     record_id=record_id)  # fmt: skip
        assert threshold == 0.5 and text.startswith("At threshold 0.500, on validation data: ")
        assert "current result" not in text
    pooled_model = registry.describe_model(model_with_roc)
    threshold, text = operating.start_for_record(session, doctor=alice, info=pooled_model, prevalence=0.1,
                                                 record_id=record.id)  # fmt: skip
    assert threshold == 0.5 and "current result" not in text
