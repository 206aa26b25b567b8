"""xray.inference.population: DICOM PatientAge, the population's threshold and the verdict it gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.dicom_files import make_dicom
from xray.imaging.io import read_image
from xray.inference import population as P
from xray.inference.models import load_model_dir
from xray.trust.operating import describe_threshold


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("045Y", 45.0), ("017Y", 17.0), ("018Y", 18.0), ("006M", 0.5), ("012M", 1.0), ("026W", 26 * 7 / 365.25),
        ("010D", 10 / 365.25), (" 45y ", 45.0), ("5Y", 5.0),
    ],
)  # fmt: skip
def test_patient_age_is_parsed_in_every_dicom_unit(text, years):
    assert P.parse_patient_age(text) == pytest.approx(years)


@pytest.mark.parametrize("text", [None, "", "Y", "45", "045X", "45 years", "-01Y", "1234Y", "04.5Y", "abc"])
def test_missing_or_malformed_patient_age_is_none(text):
    assert P.parse_patient_age(text) is None


def test_population_of_age_puts_under_18_among_children():
    assert [P.population_of_age(P.parse_patient_age(t)) for t in ("017Y", "215M", "018Y", "216M", "090Y")] == [
        "children", "children", "adults", "adults", "adults",
    ]  # fmt: skip


def test_doctors_choice_defaults_to_adults_and_refuses_anything_else():
    assert P.parse_population(None) == P.parse_population("") == P.parse_population("Adult") == "adults"
    assert P.parse_population("Child") == P.parse_population("children") == "children"
    with pytest.raises(ValueError, match="Unknown patient group 'teen'; choose Adult or Child"):
        P.parse_population("teen")


def test_config_round_trip_keeps_both_thresholds_and_the_pooled_fallback(split_model: Path):
    loaded = load_model_dir(split_model)
    assert loaded.threshold == 0.5
    assert P.population_thresholds(loaded.config) == {"children": 0.0, "adults": 1.0}


@pytest.mark.parametrize(
    "entry", [None, "0.5", {"children": 0.3}, {"children": 0.3, "adults": "x"}, {"children": 0.3, "adults": 1.5}]
)
def test_incomplete_or_broken_thresholds_fall_back_to_the_pooled_one(entry):
    assert P.population_thresholds({"thresholds": entry}) is None


def test_dicom_age_wins_over_the_doctors_choice(split_model: Path):
    loaded = load_model_dir(split_model)
    choice = P.choose_threshold(loaded, patient_age="045Y", population="Child")
    assert (choice.threshold, choice.population, choice.reason) == (1.0, "adults", "dicom")
    assert choice.why == "from the DICOM age 45 years"
    choice = P.choose_threshold(loaded, patient_age="006M", population="Adult")
    assert (choice.threshold, choice.population, choice.why) == (0.0, "children", "from the DICOM age 6 months")
    # a malformed age does not decide: the doctor's choice does
    choice = P.choose_threshold(loaded, patient_age="45 years", population="Child")
    assert (choice.threshold, choice.population, choice.why) == (0.0, "children", "chosen by the doctor")
    nobody = P.choose_threshold(loaded)  # nothing known: adults, and it says so
    assert (nobody.population, nobody.reason) == ("adults", "default")
    assert nobody.why == "no age given: most patients are adults"
    sample = P.choose_threshold(loaded, sample_population="children", population="Adult")
    assert (sample.population, sample.why) == ("children", "known from the sample's source")
    assert P.choose_threshold(loaded, patient_age="070Y", sample_population="children").population == "adults"
    assert describe_threshold(1.0, "adults", "from the DICOM age 45 years") == (
        "threshold 1.000 for adults (from the DICOM age 45 years)"
    )


def test_model_without_population_thresholds_uses_its_pooled_threshold(tiny_model_dir: Path):
    loaded = load_model_dir(tiny_model_dir)
    choice = P.choose_threshold(loaded, patient_age="006M", population="Child")
    assert choice == P.ThresholdChoice(loaded.threshold) and choice.why == ""
    assert describe_threshold(choice.threshold, choice.population, choice.why) == "threshold 0.500"


def test_the_verdict_flips_at_the_population_threshold(split_model: Path):
    """Saved, reloaded through the real loading path, run through the pipeline: one image, two verdicts."""
    from xray.analysis.pipeline import analyse, analyse_many

    loaded = load_model_dir(split_model)
    rng = np.random.default_rng(0)
    pixels = (rng.random((256, 256)) * 255).astype(np.uint8)
    image = read_image(make_dicom(pixels, PatientAge="007Y"), filename="child.dcm")
    assert image.metadata["PatientAge"] == "007Y"
    child = P.choose_threshold(loaded, patient_age=image.metadata["PatientAge"], population="Adult")
    adult = P.choose_threshold(loaded, population="Adult")
    as_child = analyse(loaded, image, threshold=child.threshold, checks=False)
    as_adult = analyse(loaded, image, threshold=adult.threshold, checks=False)
    assert as_child.probabilities == as_adult.probabilities  # the model's output does not change, only the verdict
    assert (as_child.label, as_adult.label) == ("PNEUMONIA", "NORMAL")
    assert as_child.explanation.target_label == "PNEUMONIA"  # the heatmap explains the verdict given
    many = analyse_many(loaded, [image, image], thresholds=[child.threshold, adult.threshold], checks=False)
    assert [a.label for a in many] == ["PNEUMONIA", "NORMAL"]
