"""One operating threshold per population (children, adults), chosen on the model's validation split only.

`python -m xray thresholds --model pneumonia [--data ../shared/data] [--write] [--report-test]`:

1. rebuilds the model's exact validation split from the sources, fractions and seed its metrics.json records
   (`xray.training.data.make_splits`; images added to a data folder after the model was trained are left out,
   and the rebuilt per-source counts must equal the recorded ones, so no training image is scored);
2. scores it with the real model (the app's preprocessing and calibrated softmax);
3. applies the shipped threshold's rule (`metrics.choose_threshold`: highest specificity with validation
   sensitivity >= 0.95) to each population's validation images: children = kermany-224, adults = every other
   source;
4. prints each source's validation sensitivity and specificity at the pooled and at the population threshold, and
   with `--write` stores `"thresholds"` in config.json (the pooled `threshold` stays, as the fallback) and the
   table in metrics.json (`population_thresholds`).

`--report-test` then reads the test splits once, at the thresholds already stored in config.json (never chosen
here), and stores those figures beside the validation ones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xray.errors import DatasetError
from xray.inference.population import ADULTS, CHILDREN
from xray.training import metrics as M
from xray.training.data import Sample

logger = logging.getLogger(__name__)

#: Data sources of children's X-rays; every other source is adults'.
CHILD_SOURCES = frozenset({"kermany-224"})

#: Images added to the shared data after a model was trained, by data source (see ../shared/data/README.md):
#: the muhammedtalo NIH sample (`nih_<index>` files; the earlier jrzech sample is `nih_nihzech_*` / `nih_nihtxv_*`)
#: and the COVID-CXNet collection. A model whose metrics.json does not list a source never saw it.
ADDED_LATER = {"nih": re.compile(r"^nih_\d+")}

RULE = "highest specificity with validation sensitivity >= {:.2f}, per population"


def population_of_source(source: str) -> str:
    """`children` for Kermany's paediatric source, `adults` for every other."""
    return CHILDREN if source in CHILD_SOURCES else ADULTS


def select_population_thresholds(
    y_true: np.ndarray, p_positive: np.ndarray, sources: Sequence[str], *, min_sensitivity: float = 0.95
) -> dict[str, dict[str, Any]]:
    """The shipped threshold's rule applied to each population's validation images on its own.

    Args:
        y_true: 1 for the positive class, 0 otherwise.
        p_positive: calibrated probability of the positive class.
        sources: each image's data source.
        min_sensitivity: the rule's sensitivity target.

    Returns:
        `{population: choose_threshold(...) + {"n", "sources", "roc"}}` for each population present; `roc` is the
        population's validation ROC (`metrics.roc_points`), for the app's operating panel.
    """
    y = np.asarray(y_true)
    p = np.asarray(p_positive, dtype=np.float64)
    populations = np.array([population_of_source(str(s)) for s in sources])
    out = {}
    for population in (CHILDREN, ADULTS):
        mask = populations == population
        if not mask.any():
            continue
        choice = M.choose_threshold(y[mask], p[mask], min_sensitivity=min_sensitivity)
        choice["n"] = int(mask.sum())
        if 0 < y[mask].sum() < mask.sum():
            choice["roc"] = M.roc_points(y[mask], p[mask])
        choice["sources"] = sorted({str(s) for s, m in zip(sources, mask, strict=True) if m})
        out[population] = choice
    return out


def rates(y_true: np.ndarray, p_positive: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts, accuracy, sensitivity, specificity at `threshold` (positive when p >= threshold; None if undefined)."""
    y = np.asarray(y_true).astype(bool)
    called = np.asarray(p_positive) >= threshold
    tp, fn = int((called & y).sum()), int((~called & y).sum())
    tn, fp = int((~called & ~y).sum()), int((called & ~y).sum())
    return {
        "threshold": float(threshold), "n": int(len(y)), "positives": tp + fn, "negatives": tn + fp,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "accuracy": (tp + tn) / len(y) if len(y) else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
    }  # fmt: skip


def source_table(
    y_true: np.ndarray, p_positive: np.ndarray, sources: Sequence[str], pooled: float, per_population: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per data source: its population and its figures at the pooled and at its population's threshold."""
    y, p = np.asarray(y_true), np.asarray(p_positive)
    names = np.asarray([str(s) for s in sources], dtype=object)
    table = {}
    for source in dict.fromkeys(names.tolist()):
        mask = names == source
        population = population_of_source(source)
        table[source] = {
            "population": population,
            "pooled": rates(y[mask], p[mask], pooled),
            "population_threshold": rates(y[mask], p[mask], per_population[population]),
        }
    return table


# ---------------------------------------------------------------- the model's own splits


def _data_folder(recorded: str, data_root: Path | None) -> Path:
    """Where a recorded data source (`../shared/data/kermany-224`) is: under `data_root` when given."""
    path = Path(recorded)
    return data_root / path.name if data_root is not None else path


def training_time_sources(
    metrics: dict[str, Any], data_root: Path | None, *, drop_added_later: bool = True
) -> tuple[list[list[Sample]], int]:
    """The model's data sources as it was trained on them, and how many images were left out as added since.

    The sources are its recorded folders, less the sources its metrics.json does not list and, with
    `drop_added_later`, less the images `ADDED_LATER` names (for a model trained before the data grew).
    """
    from xray.training.data import load_samples, merge_labels, parse_label_map

    data = metrics.get("data") or {}
    training = metrics.get("training") or {}
    folders = data.get("sources") or training.get("data")
    if not folders:
        raise DatasetError("This model's metrics.json records no data sources, so its validation split is unknown.")
    known = set((data.get("data_sources") or {}).get("train") or {})
    mapping = parse_label_map(data.get("label_map") or training.get("label_map"))
    out, left_out = [], 0
    for folder in folders:
        samples = load_samples(_data_folder(folder, data_root))
        kept = [
            s for s in samples
            if (not known or s.data_source in known)
            and not (drop_added_later and s.data_source in ADDED_LATER
                     and ADDED_LATER[s.data_source].match(Path(str(s.source)).name))
        ]  # fmt: skip
        left_out += len(samples) - len(kept)
        if len(kept) < len(samples):
            logger.info("%s: %d images left out (added after this model was trained, or a source it never had)",
                        folder, len(samples) - len(kept))  # fmt: skip
        out.append(merge_labels(kept, mapping))
    return out, left_out


def rebuild_splits(metrics: dict[str, Any], label_names: Sequence[str], data_root: Path | None) -> tuple[Any, int]:
    """The model's train/val/test splits, checked against its recorded per-source counts, and the images left out.

    The data as they are now are tried first (a model trained on today's data), then without the images added
    since (`ADDED_LATER`, a model trained before); the split whose train and validation counts per source equal
    the recorded ones is the model's.

    Raises:
        DatasetError: neither rebuilt split has the recorded counts (the data changed in a way not accounted for).
    """
    from collections import Counter

    from xray.training.data import make_splits

    training = metrics.get("training") or {}
    recorded = (metrics.get("data") or {}).get("data_sources") or {}
    mismatch = ""
    for drop_added_later in (False, True):
        sources, left_out = training_time_sources(metrics, data_root, drop_added_later=drop_added_later)
        splits = make_splits(
            sources,
            label_names=label_names,
            val_fraction=float(training.get("val_fraction", 0.15)),
            test_fraction=float(training.get("test_fraction", 0.2)),
            seed=int(training.get("seed", 0)),
        )
        mismatch = ""
        for split in ("train", "val"):
            counts = dict(Counter(s.data_source for s in getattr(splits, split)))
            if recorded.get(split) and counts != recorded[split]:
                mismatch = f"The rebuilt {split} split ({counts}) differs from the recorded one ({recorded[split]})"
                break
        if not mismatch:
            return splits, left_out
    raise DatasetError(f"{mismatch}: its validation images cannot be told apart from its training images.")


def probabilities(loaded: Any, samples: Sequence[Sample]) -> np.ndarray:
    """Calibrated class probabilities (N, C) for each sample, through the app's preprocessing."""
    from xray.training.data import load_pixels
    from xray.training.evaluate import predict_logits

    size = tuple(loaded.data_config["input_size"][1:])
    images = load_pixels(samples, size, str(loaded.data_config.get("interpolation", "bilinear")), progress=False)
    return M.softmax(predict_logits(loaded, images), loaded.temperature)


def score(loaded: Any, samples: Sequence[Sample]) -> np.ndarray:
    """Calibrated probability of the positive class for each sample, through the app's preprocessing."""
    return probabilities(loaded, samples)[:, loaded.label_names.index(loaded.positive_label)]


def _targets(loaded: Any, samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.label == loaded.positive_label for s in samples], dtype=np.int64)


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def format_table(table: dict[str, dict[str, Any]], title: str) -> str:
    """The per-source table as text: n, then accuracy / sensitivity / specificity at both thresholds."""
    lines = [title, f"{'source':16} {'pop':8} {'n':>5}  {'pooled acc/sens/spec':>24}  {'population acc/sens/spec':>28}"]
    for source, row in table.items():
        a, b = row["pooled"], row["population_threshold"]
        lines.append(
            f"{source:16} {row['population']:8} {a['n']:5d}  "
            f"{_pct(a['accuracy'])} {_pct(a['sensitivity'])} {_pct(a['specificity'])}    "
            f"{_pct(b['accuracy'])} {_pct(b['sensitivity'])} {_pct(b['specificity'])}"
        )
    return "\n".join(lines)


def run_thresholds_command(args: Any) -> int:
    """`python -m xray thresholds --model NAME [--data ROOT] [--write] [--report-test]` (see the module docstring)."""
    from xray.inference.models import load_model, update_config
    from xray.inference.population import population_thresholds

    loaded = load_model(args.model)
    if loaded.threshold is None or len(loaded.label_names) != 2:
        print(f"{loaded.name} has {len(loaded.label_names)} classes and decides by argmax: no threshold to choose.")
        return 0
    data_root = Path(args.data) if args.data else None
    splits, left_out = rebuild_splits(loaded.metrics, loaded.label_names, data_root)
    min_sensitivity = float((loaded.metrics.get("training") or {}).get("min_sensitivity", 0.95))
    val_sources = [s.data_source for s in splits.val]
    y_val, p_val = _targets(loaded, splits.val), score(loaded, splits.val)
    pooled = float(loaded.threshold)
    refit = M.choose_threshold(y_val, p_val, min_sensitivity=min_sensitivity)
    print(f"pooled threshold {pooled:.4f}; the rule on the rebuilt validation split gives {refit['threshold']:.4f} "
          f"(sensitivity {refit['sensitivity']:.4f}, specificity {refit['specificity']:.4f})")
    chosen = select_population_thresholds(y_val, p_val, val_sources, min_sensitivity=min_sensitivity)
    for name, c in chosen.items():
        print(f"{name}: threshold {c['threshold']:.4f} ({c['rule']}; validation n={c['n']}, sensitivity "
              f"{c['sensitivity']:.4f}, specificity {c['specificity']:.4f}; sources {', '.join(c['sources'])})")
    kept = set(getattr(args, "keep_pooled", None) or [])
    floor = getattr(args, "min_specificity", None)
    if floor is not None:
        low = {name for name, c in chosen.items() if c["specificity"] is None or c["specificity"] < floor}
        for name in sorted(low - kept):
            print(f"{name}: validation specificity {chosen[name]['specificity']:.4f} at its own threshold is below "
                  f"--min-specificity {floor:.2f}")
        kept |= low
    kept = sorted(kept)
    for name in kept:
        if name in chosen:
            chosen[name] = {**chosen[name], "own_threshold": chosen[name]["threshold"], "threshold": pooled,
                            "kept_pooled": True}  # fmt: skip
            print(f"{name}: keeps the pooled threshold {pooled:.4f} (--keep-pooled); its own was "
                  f"{chosen[name]['own_threshold']:.4f}")
    per_population = {name: c["threshold"] for name, c in chosen.items()}
    val_table = source_table(y_val, p_val, val_sources, pooled, per_population)
    print(format_table(val_table, "validation (accuracy, sensitivity, specificity):"))
    chosen_on = (
        f"Chosen on this model's own validation split, rebuilt with make_splits (seed "
        f"{(loaded.metrics.get('training') or {}).get('seed', 0)}) from the sources it was trained on"
        + (f", less the {left_out} images added to them after it was trained" if left_out else "")
        + "; the rebuilt per-source counts equal the "
        f"recorded ones and the pooled rule on it gives back {refit['threshold']:.3f} (sensitivity "
        f"{100 * refit['sensitivity']:.1f}%, specificity {100 * refit['specificity']:.1f}%)."
    )
    result: dict[str, Any] = {
        "rule": RULE.format(min_sensitivity), "pooled_threshold": pooled, "populations": chosen,
        "chosen_on": chosen_on, "validation": {"pooled_refit": refit, "sources": val_table}, "kept_pooled": kept,
    }  # fmt: skip
    folder = loaded.path
    if args.write:
        if set(per_population) != {CHILDREN, ADULTS}:
            raise DatasetError(f"Validation holds only {', '.join(per_population)}: both populations are needed.")
        # config.json as it is on disk now (the loaded model may be cached from before an earlier --write)
        on_disk = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        _refuse_silent_replacement(on_disk, kept, per_population, getattr(args, "replace_kept", False))
        counts = ", ".join(f"{n}: {c['n']} images ({', '.join(c['sources'])})" for n, c in chosen.items())
        update_config(folder, thresholds={
            **per_population, "rule": RULE.format(min_sensitivity),
            **({"kept_pooled": kept} if kept else {}),
            "chosen_on": f"validation split of the training data (make_splits, seed "
                         f"{(loaded.metrics.get('training') or {}).get('seed', 0)}) - {counts}",
        })  # fmt: skip
        _update_metrics(folder, result)
        print(f"wrote thresholds to {folder / 'config.json'} and the table to {folder / 'metrics.json'}")
    if args.report_test:
        stored = population_thresholds(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        if stored is None:
            raise DatasetError("config.json holds no per-population thresholds: run with --write first.")
        samples, _ = splits_for_test(loaded, data_root)
        test_sources = [s.data_source for s in samples]
        y_test, p_test = _targets(loaded, samples), score(loaded, samples)
        test_table = source_table(y_test, p_test, test_sources, pooled, stored)
        print(format_table(test_table, "test, read once at the stored thresholds (accuracy, sensitivity, specificity)"))
        if args.write:
            _update_metrics(folder, {"test": {"thresholds": stored, "sources": test_table}})
    return 0


def _refuse_silent_replacement(
    config: dict[str, Any], kept: list[str], per_population: dict[str, float], replace: bool
) -> None:
    """Refuse to overwrite a population's kept pooled threshold unless this run keeps it too or `replace` says so.

    A rerun without `--min-specificity` (or `--keep-pooled`) would otherwise store that population's own threshold,
    which the earlier run had rejected on validation, with nothing said.

    Raises:
        DatasetError: a population kept on the pooled threshold in config.json would get its own threshold.
    """
    stored = config.get("thresholds") if isinstance(config, dict) else None
    before = set((stored or {}).get("kept_pooled") or []) if isinstance(stored, dict) else set()
    dropped = sorted(before - set(kept))
    if dropped and not replace:
        changes = ", ".join(f"{name} {per_population[name]:.4f}" for name in dropped if name in per_population)
        raise DatasetError(
            f"config.json keeps the pooled threshold for {', '.join(dropped)} (an earlier --keep-pooled or "
            f"--min-specificity choice); this run would store its own threshold instead ({changes}). Repeat the "
            f"earlier flag ({' '.join(f'--keep-pooled {n}' for n in dropped)} or the same --min-specificity), or "
            "pass --replace-kept to replace it on purpose. Nothing was written."
        )


def splits_for_test(loaded: Any, data_root: Path | None) -> tuple[list[Sample], Any]:
    """The test splits of the model's recorded data folders as they are now (adult-cxr's enlarged test split)."""
    from xray.training.data import load_samples, make_splits, merge_labels, parse_label_map

    data = loaded.metrics.get("data") or {}
    training = loaded.metrics.get("training") or {}
    mapping = parse_label_map(data.get("label_map") or training.get("label_map"))
    sources = [merge_labels(load_samples(_data_folder(f, data_root)), mapping) for f in data.get("sources") or []]
    splits = make_splits(
        sources, label_names=loaded.label_names, val_fraction=float(training.get("val_fraction", 0.15)),
        test_fraction=float(training.get("test_fraction", 0.2)), seed=int(training.get("seed", 0)),
    )  # fmt: skip
    return splits.test, splits


def _update_metrics(folder: Path, values: dict[str, Any]) -> None:
    """Merge `values` into metrics.json's `population_thresholds`."""
    from xray.training.evaluate import _clean

    path = folder / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    metrics.setdefault("population_thresholds", {}).update(values)
    path.write_text(json.dumps(_clean(metrics), indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- model card


def _count(k: int, n: int, ci: bool) -> str:
    """`381/390 = 97.7% (95.7-98.8)`, or `n/a` for an empty group."""
    if not n:
        return "n/a"
    text = f"{k}/{n} = {100 * k / n:.1f}%"
    if ci:
        low, high = M.wilson_interval(k, n)
        text += f" ({100 * low:.1f}-{100 * high:.1f})"
    return text


def _card_table(table: dict[str, dict[str, Any]], pooled: float, ci: bool) -> list[str]:
    from xray.trust.operating import format_threshold

    lines = [
        f"| source | population (threshold) | n | accuracy: {format_threshold(pooled)} -> population | sensitivity: "
        f"{format_threshold(pooled)} -> population | specificity: {format_threshold(pooled)} -> population |",
        "|---|---|---|---|---|---|",
    ]
    for source, row in table.items():
        a, b = row["pooled"], row["population_threshold"]
        cells = [
            f"{_count(a['tp'] + a['tn'], a['n'], ci)} -> {_count(b['tp'] + b['tn'], b['n'], ci)}",
            f"{_count(a['tp'], a['positives'], ci)} -> {_count(b['tp'], b['positives'], ci)}"
            if a["positives"] else "n/a",
            f"{_count(a['tn'], a['negatives'], ci)} -> {_count(b['tn'], b['negatives'], ci)}"
            if a["negatives"] else "n/a",
        ]  # fmt: skip
        lines.append(
            f"| {source} | {row['population']} ({format_threshold(b['threshold'])}) | {a['n']} | " + " | ".join(cells)
            + " |"
        )
    return lines


def render_card_section(metrics: dict[str, Any], *, level: int = 2) -> list[str]:
    """The model card's per-population threshold section from metrics.json's `population_thresholds` ([] if none)."""
    from xray.trust.operating import format_threshold

    entry = metrics.get("population_thresholds") or {}
    chosen = entry.get("populations") or {}
    if not chosen or not entry.get("validation"):
        return []
    pooled = float(entry["pooled_threshold"])
    names = ", ".join(f"{name} {format_threshold(c['threshold'])}" for name, c in chosen.items())
    groups = "; ".join(f"{name}: {c['n']} validation images ({', '.join(c['sources'])})" for name, c in chosen.items())
    lines = [
        f"{'#' * level} Per-population thresholds ({', '.join(chosen)})",
        "",
        f"One threshold on the positive class's probability per population, in config.json `thresholds`: {names} "
        f"(the pooled {format_threshold(pooled)} stays as the fallback). Rule: {entry['rule']}; {groups}. "
        f"{entry.get('chosen_on', '')} The app takes the population from the DICOM PatientAge (under 18 years: "
        "children), else from the doctor (Adult / Child, default Adult), and says which threshold it used and why.",
        "",
    ]
    for name, c in chosen.items():
        if c.get("kept_pooled"):
            lines[2] += (
                f" {name.capitalize()} keep the pooled threshold: the rule's own {name} threshold, "
                f"{format_threshold(c['own_threshold'])}, reached validation sensitivity {100 * c['sensitivity']:.1f}% "
                f"but specificity {100 * c['specificity']:.1f}% ({c['n']} images), too many normal patients called "
                "positive for a population that is mostly normal."
            )
    lines += [
        "Validation (the split the thresholds were chosen on):",
        "",
        *_card_table(entry["validation"]["sources"], pooled, ci=False),
    ]
    test = entry.get("test")
    if test:
        lines += [
            "",
            "Test, read once after the thresholds were stored (`python -m xray thresholds --report-test`; 95% Wilson "
            "intervals):",
            "",
            *_card_table(test["sources"], pooled, ci=True),
        ]
    return lines + [""]
