"""Which operating threshold a request uses: one per population (children, adults) when the model carries them.

A model whose config.json has `"thresholds": {"children": t, "adults": t, ...}` (chosen on validation by
`python -m xray thresholds`) decides each image with its population's threshold. The population comes from the
DICOM PatientAge when the file has one (under 18 years: children), otherwise from the doctor's choice. A model
without per-population thresholds decides with its pooled `threshold`, exactly as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CHILDREN, ADULTS = "children", "adults"
POPULATIONS = (ADULTS, CHILDREN)
#: The doctor's choice when nothing else is known: the project's patients are mostly adults.
DEFAULT_POPULATION = ADULTS
#: Age (years) from which a patient counts as an adult.
ADULT_AGE_YEARS = 18.0
#: The doctor-facing names of the populations (form choices) and back.
POPULATION_CHOICES = {"Adult": ADULTS, "Child": CHILDREN}

FROM_DICOM, FROM_DOCTOR, FROM_SAMPLE, FROM_DEFAULT = "dicom", "doctor", "sample", "default"

# DICOM Age String (AS): nnnD, nnnW, nnnM or nnnY; tolerate missing zero padding and surrounding spaces.
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def parse_patient_age(text: Any) -> float | None:
    """Age in years from a DICOM PatientAge ("045Y", "006M", "003W", "010D"), or None when missing or malformed."""
    if text is None:
        return None
    match = _AGE.match(str(text))
    if not match:
        return None
    return int(match.group(1)) * _DAYS_PER_UNIT[match.group(2).upper()] / 365.25


def population_of_age(years: float) -> str:
    """`children` under 18 years, else `adults`."""
    return CHILDREN if years < ADULT_AGE_YEARS else ADULTS


def parse_population(choice: Any) -> str:
    """The doctor's choice ("Adult" / "Child", or `adults` / `children`) as a population; empty means adults.

    Raises:
        ValueError: an unknown choice (callers turn it into a form error).
    """
    if choice is None or str(choice).strip() == "":
        return DEFAULT_POPULATION
    text = str(choice).strip()
    if text in POPULATION_CHOICES:
        return POPULATION_CHOICES[text]
    if text.lower() in POPULATIONS:
        return text.lower()
    raise ValueError(f"Unknown patient group '{choice}'; choose {' or '.join(POPULATION_CHOICES)}.")


def population_thresholds(config: dict[str, Any]) -> dict[str, float] | None:
    """`{"children": t, "adults": t}` from a model's config.json, or None when it has no per-population thresholds."""
    entry = config.get("thresholds") if isinstance(config, dict) else None
    if not isinstance(entry, dict):
        return None
    try:
        values = {name: float(entry[name]) for name in POPULATIONS}
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(0.0 <= v <= 1.0 for v in values.values()) else None


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold one request is decided with, and why.

    Attributes:
        threshold: the threshold on the positive-class probability (None: argmax model).
        population: `children` / `adults` when the model has per-population thresholds, else None (pooled).
        reason: where the population came from: `dicom`, `doctor`, `sample` or `default` (nobody chose: adults);
            None for the pooled threshold.
        age_years: the DICOM age when it decided the population.
    """

    threshold: float | None
    population: str | None = None
    reason: str | None = None
    age_years: float | None = None

    @property
    def why(self) -> str:
        """`from the DICOM age 45 years`, `chosen by the doctor`, ... ('' for the pooled threshold)."""
        if self.population is None:
            return ""
        if self.reason == FROM_DICOM and self.age_years is not None:
            return f"from the DICOM age {format_age(self.age_years)}"
        if self.reason == FROM_SAMPLE:
            return "known from the sample's source"
        if self.reason == FROM_DEFAULT:
            return "no age given: most patients are adults"
        return "chosen by the doctor"


def format_age(years: float) -> str:
    """`45 years`, `6 months`, `3 weeks` (the unit a reader expects for the age)."""
    if years >= 2:
        return f"{int(years)} years"
    months = years * 12
    if months >= 1:
        return f"{int(round(months))} month{'s' if round(months) != 1 else ''}"
    weeks = years * 365.25 / 7
    return f"{int(round(weeks))} week{'s' if round(weeks) != 1 else ''}"


def choose_threshold(
    loaded: Any, *, patient_age: Any = None, population: Any = None, sample_population: str | None = None
) -> ThresholdChoice:
    """The threshold to decide one image with.

    Precedence: the DICOM PatientAge when it parses, then a known sample's population (public demo samples),
    then the doctor's choice (default adults). Models without per-population thresholds use their pooled one.

    Args:
        loaded: the model (`LoadedModel`: `threshold`, `config`).
        patient_age: the DICOM PatientAge text, if any.
        population: the doctor's choice ("Adult" / "Child"); None or empty: nobody chose, adults.
        sample_population: the population of a sample whose source is known.

    Raises:
        ValueError: an unknown doctor's choice.
    """
    choice = parse_population(population)
    per_population = population_thresholds(getattr(loaded, "config", {}) or {})
    if loaded.threshold is None or per_population is None:
        return ThresholdChoice(loaded.threshold)
    years = parse_patient_age(patient_age)
    if years is not None:
        group = population_of_age(years)
        return ThresholdChoice(per_population[group], group, FROM_DICOM, years)
    if sample_population in POPULATIONS:
        return ThresholdChoice(per_population[sample_population], sample_population, FROM_SAMPLE)
    chosen = population is not None and str(population).strip() != ""
    return ThresholdChoice(per_population[choice], choice, FROM_DOCTOR if chosen else FROM_DEFAULT)
