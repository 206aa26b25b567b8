"""Model cards: a README.md per model folder (from its metrics.json) and the top-level model_card.md comparison.

Everything quoted is read from metrics.json / config.json, never typed by hand, so a card cannot drift from
the evaluation it describes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DISCLAIMER = (
    "**Decision support only, not a diagnostic device.** This model has not been cleared or approved by any "
    "regulator (FDA, CE/MDR or other) and must not be used to diagnose, treat or triage patients. A qualified "
    "clinician reads every image and makes every decision."
)

DATA_PROVENANCE = {
    "kermany": (
        "Kermany, Zhang, Goldbaum (2018), *Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for "
        'Classification*, Mendeley Data v2, CC BY 4.0 (the Kaggle "Chest X-Ray Images (Pneumonia)" set): '
        "pediatric anterior-posterior chest X-rays of children aged 1-5 from Guangzhou Women and Children's "
        "Medical Center, resized to 224x224. The official 624-image test set (234 NORMAL, 390 PNEUMONIA) is the "
        "test set; validation is carved from the training set by patient."
    ),
    "covid": (
        "Cohen, Morrison, Dao (2020), *COVID-19 image data collection*, arXiv:2003.11597 (github ieee8023), "
        "snapshot of 2020-06-22: frontal views only (PA, AP, AP Supine, AP semi erect), per-image licences "
        "(mostly CC BY-NC-SA or CC BY). Mapping: findings containing COVID-19 (incl. COVID-19+ARDS) -> COVID-19; "
        "other pneumonias (SARS, MERS, bacterial, fungal, ...) -> PNEUMONIA; No Finding -> NORMAL; 'todo' "
        "(unlabelled) rows dropped. Held out by `patientid`."
    ),
}

LIMITATIONS = [
    "Kermany's NORMAL and PNEUMONIA images are children aged 1-5 from one hospital in Guangzhou, while the "
    "COVID-19 images are mostly adults from many hospitals and publications. A model can learn age, body size, "
    "hospital, scanner or image-processing differences instead of disease; high test scores on these data sets "
    "do not show that it recognises pneumonia or COVID-19 in a new population.",
    "The test sets come from the same sources as the training data. Performance on other hospitals, adults "
    "(for the pneumonia model), portable/ICU films, lateral views, or images with devices and annotations is "
    "unknown and probably lower.",
    "Kermany's labels come from expert graders without CT or laboratory confirmation; covid-chestxray images are "
    "taken from publications and websites (often cropped, annotated or compressed) and its labels are as "
    "reported by their sources.",
    "Probabilities are calibrated by temperature scaling on validation data from the same sources; they are "
    "not risks for a patient in another setting.",
    "Grad-CAM heatmaps show which pixels influenced the score, not where the disease is.",
]


def _epochs(training: dict[str, Any]) -> str:
    steps, per_epoch = training.get("steps_run"), training.get("steps_per_epoch")
    if steps and per_epoch:
        return f"{steps / per_epoch:.2f} epochs ({steps} steps)"
    return f"{training.get('epochs_run')} epochs"


def _init(init: str | None) -> str:
    if init == "imagenet":
        return "ImageNet weights"
    if init == "scratch":
        return "random (trained from scratch)"
    return f"fine-tuned from our checkpoint `{init}` (its classifier head replaced when the classes differ)"


def _fmt(value: Any, digits: int = 3, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.{digits}f}"


def _with_ci(block: dict[str, Any], key: str, pct: bool = True) -> str:
    value = block["value"].get(key)
    ci = block.get("ci95", {}).get(key)
    text = _fmt(value, pct=pct)
    if ci and ci[0] is not None and value is not None:
        text += f" ({_fmt(ci[0], pct=pct)}-{_fmt(ci[1], pct=pct)})"
    return text


def _metrics_table(result: dict[str, Any]) -> list[str]:
    labels = result["label_names"]
    test = result["test"]
    lines = []
    if len(labels) == 2:
        blocks = [("0.5", test["at_default"])]
        if "at_threshold" in test:
            blocks.append((f"{result['threshold']:.3f} (chosen on validation)", test["at_threshold"]))
        lines += [
            "| threshold | accuracy | sensitivity | specificity | precision (PPV) | NPV | F1 | ROC AUC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, block in blocks:
            cells = [_with_ci(block, k) for k in ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_with_ci(block, 'auc', pct=False)} |")
        lines += ["", f"Positive class: {labels[1]}. FPR = 1 - specificity, FNR = 1 - sensitivity."]
    else:
        block = test["at_default"]
        lines += [
            f"Overall accuracy {_with_ci(block, 'accuracy')}, macro one-vs-rest ROC AUC "
            f"{_with_ci(block, 'auc', pct=False)} (decision: highest probability).",
            "",
            "| class | n | sensitivity | specificity | precision | F1 | ROC AUC (one-vs-rest) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in labels:
            cells = [_with_ci(block, f"{k}/{name}") for k in ("sensitivity", "specificity", "precision", "f1")]
            lines.append(
                f"| {name} | {test['counts'][name]} | "
                + " | ".join(cells)
                + f" | {_with_ci(block, f'auc/{name}', pct=False)} |"
            )
    lines += [
        "",
        "95% confidence intervals in parentheses (stratified bootstrap, "
        f"{result.get('training', {}).get('bootstrap', 1000)} resamples).",
    ]
    return lines


def render_model_card(config: dict[str, Any], result: dict[str, Any]) -> str:
    """The README.md text for a model folder, from its config.json and metrics.json."""
    labels = result["label_names"]
    training = result.get("training", {})
    data = result.get("data", {})
    sources = " ".join(str(s) for s in data.get("sources", []))
    provenance = [text for key, text in DATA_PROVENANCE.items() if key in sources.lower()]
    cal = result["test"]["calibration"]
    validation = result.get("validation", {})
    fp16 = result.get("fp16")
    task = "pneumonia (NORMAL vs PNEUMONIA)" if labels == ["NORMAL", "PNEUMONIA"] else " / ".join(labels)
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags: [chest-x-ray, medical-imaging, decision-support, timm]",
        "---",
        "",
        f"# Chest X-ray classifier: {task}",
        "",
        DISCLAIMER,
        "",
        "## Model",
        "",
        f"- Architecture: timm `{result['architecture']}`, {result.get('num_parameters', 0) / 1e6:.2f} M parameters, "
        f"weights {result.get('weights_bytes', 0) / 1e6:.1f} MB" + (" (stored in fp16)" if fp16 else "") + ".",
        f"- Classes (output order): {', '.join(labels)}.",
        f"- Initialisation: {_init(training.get('init'))}; input {training.get('data_config', {}).get('input_size')} "
        "(whole image resized, no crop; mean/std in config.json).",
        f"- Training: AdamW (lr {training.get('lr')}, weight decay {training.get('weight_decay')}), "
        f"{training.get('schedule')} schedule, batch {training.get('batch_size')}, class imbalance by "
        f"{training.get('balance')}, augmentation rotation +-{training.get('rotation')} deg, shift "
        f"{training.get('translate')}, zoom +-{training.get('zoom')}, "
        f"flips {'on' if training.get('hflip') else 'off'}; "
        f"{_epochs(training)} run"
        + (f" with the stem and first {training['freeze']} stages frozen" if training.get("freeze") else "")
        + f", best validation AUC {_fmt(training.get('best_val_auc'), 4)} at "
        f"epoch {training.get('best_epoch')} ({training.get('stop_reason')}); "
        f"{_fmt(training.get('seconds_per_epoch'), 0)} s per epoch on {training.get('device')} "
        f"({training.get('threads')} threads).",
        f"- Temperature {_fmt(result.get('temperature'))} (fitted on validation)"
        + (
            f"; operating threshold on P({labels[1]}) = {_fmt(result.get('threshold'))}, chosen on validation by "
            f"the rule: {validation.get('threshold', {}).get('rule')}."
            if result.get("threshold") is not None
            else "."
        ),
    ]
    if fp16:
        lines.append(
            f"- fp16 storage changes probabilities by at most {fp16['max_abs_probability_diff']:.1e} on "
            f"{fp16['images_checked']} test images ({fp16['decisions_changed']} decisions changed)."
        )
    lines += [
        "",
        "## Intended use",
        "",
        "Research and teaching demonstration of image classification with explanations (Grad-CAM) in a "
        "decision-support interface. Not for clinical use; not for screening; not a substitute for a "
        "radiologist.",
        "",
        "## Data",
        "",
    ]
    lines += [f"- {text}" for text in provenance] or [f"- Sources: {sources}"]
    counts = data.get("split_counts", {})
    if counts:
        lines += ["", "| split | " + " | ".join(labels) + " | patients/groups |", "|---" * (len(labels) + 2) + "|"]
        for split in ("train", "val", "test"):
            row = counts.get(split, {})
            lines.append(
                f"| {split} | " + " | ".join(str(row.get(n, 0)) for n in labels) + f" | {row.get('groups', 0)} |"
            )
        lines += [
            "",
            f"Split rule: {data.get('split_rule', 'n/a')}. The test split never chose an epoch, a "
            "threshold, a temperature or a model.",
        ]
        overlap = data.get("patient_overlap", {})
        if overlap.get("train_test"):
            lines += [
                "",
                f"Note: {overlap['train_test']} patient ids of the training split and "
                f"{overlap.get('val_test', 0)} of the validation split also occur in the test split. This is "
                "Kermany's official, published train/test split, kept so results compare with the literature; "
                "the ids may have been numbered per folder (so these may be different children), but if they "
                "are the same children the test results are slightly flattered.",
            ]
    lines += ["", f"## Results on the test set ({result['test']['n']} images)", ""]
    lines += _metrics_table(result)
    chosen = validation.get("threshold")
    if chosen:
        lines += [
            "",
            f"On validation the chosen threshold gave sensitivity {_fmt(chosen['sensitivity'], pct=True)} and "
            f"specificity {_fmt(chosen['specificity'], pct=True)}; the gap to the test figures shows how far the "
            "test images differ from the training distribution.",
        ]
    lines += [
        "",
        f"Calibration (expected calibration error, 15 bins, test set): {_fmt(cal['ece_before'])} before and "
        f"{_fmt(cal['ece_after'])} after temperature scaling (validation: {_fmt(validation.get('ece_before'))} "
        f"-> {_fmt(validation.get('ece_after'))}).",
        "",
        "Plots: `roc.png`, `reliability.png`, `confusion.png`, `curves.png`. All numbers: `metrics.json` "
        "(including validation ROC points for choosing another operating point).",
        "",
        "## Limitations",
        "",
    ]
    lines += [f"- {text}" for text in LIMITATIONS]
    lines += [
        "",
        "## How to use",
        "",
        "```bash",
        "python -m xray predict --model local-dir:PATH image.png   # or hf-hub:org/name",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | Path) -> Path:
    """Write `folder/README.md` from its config.json and metrics.json."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    result = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    path = folder / "README.md"
    path.write_text(render_model_card(config, result), encoding="utf-8")
    return path


def render_comparison(entries: Sequence[dict[str, Any]], *, defaults: dict[str, str], notes: Sequence[str] = ()) -> str:
    """The top-level model_card.md: every trained backbone side by side.

    Args:
        entries: one dict per trained model: `name`, `task`, `metrics` (metrics.json), `latency` (p50/p90 ms),
            `weights_bytes`, `shipped` (bundled folder name or None).
        defaults: task -> one paragraph saying which model is the default and why.
        notes: extra paragraphs (e.g. what could not be done here).
    """
    lines = ["# Model card: chest X-ray classifiers", "", DISCLAIMER, ""]
    for task in dict.fromkeys(e["task"] for e in entries):
        rows = [e for e in entries if e["task"] == task]
        labels = rows[0]["metrics"]["label_names"]
        n = rows[0]["metrics"]["test"]["n"]
        lines += [
            f"## {task}",
            "",
            f"Test set: {n} images {rows[0]['metrics']['test']['counts']}; 95% bootstrap CIs.",
            "",
        ]
        if len(labels) == 2:
            lines += [
                "| model | init | epochs | accuracy @thr | sensitivity @thr | specificity @thr | ROC AUC | "
                "accuracy @0.5 | threshold | T | ECE before -> after | params | size | CPU p50 |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
        else:
            lines += [
                "| model | init | epochs | accuracy | macro AUC | "
                + " | ".join(f"sens. {n}" for n in labels)
                + " | ECE before -> after | params | size | CPU p50 |",
                "|---" * (9 + len(labels)) + "|",
            ]
        for e in rows:
            m = e["metrics"]
            tr = m.get("training", {})
            cal = m["test"]["calibration"]
            head = f"| {e['name']}{' **(default)**' if e.get('shipped') else ''} | {tr.get('init')} | {_epochs(tr)} |"
            tail = (
                f" {_fmt(cal['ece_before'])} -> {_fmt(cal['ece_after'])} | {m['num_parameters'] / 1e6:.2f} M | "
                f"{e['weights_bytes'] / 1e6:.1f} MB | {e['latency']['p50_ms']:.0f} ms |"
            )
            d = m["test"]["at_default"]
            if len(labels) == 2:
                t = m["test"].get("at_threshold", d)
                lines.append(
                    head + f" {_with_ci(t, 'accuracy')} | {_with_ci(t, 'sensitivity')} | "
                    f"{_with_ci(t, 'specificity')} | {_with_ci(d, 'auc', pct=False)} | "
                    f"{_with_ci(d, 'accuracy')} | {_fmt(m.get('threshold'))} | {_fmt(m.get('temperature'), 2)} |" + tail
                )
            else:
                lines.append(
                    head
                    + f" {_with_ci(d, 'accuracy')} | {_with_ci(d, 'auc', pct=False)} | "
                    + " | ".join(_with_ci(d, f"sensitivity/{name}") for name in labels)
                    + " |"
                    + tail
                )
        lines += ["", defaults.get(task, ""), ""]
    lines += ["## Notes", ""] + [f"- {note}" for note in notes] + ["", "## Limitations", ""]
    lines += [f"- {text}" for text in LIMITATIONS] + [""]
    return "\n".join(lines)


def build_comparison(
    runs: Sequence[tuple[str, str, str | Path]],
    out_path: str | Path,
    *,
    latency_image: str | Path,
    shipped: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Measure every run's one-image CPU latency and write the comparison model_card.md.

    Args:
        runs: (task, display name, model folder) per trained model.
        out_path: where to write model_card.md.
        latency_image: an image file to time `xray.predict.predict` on (read with `xray.io.read_image`).
        shipped: display name -> bundled folder name for the models shipped as defaults.
        defaults: task -> paragraph saying which model is the default and why.
        notes: extra paragraphs.
    """
    from xray.evaluate import measure_latency
    from xray.io import read_image
    from xray.models import load_model_dir

    image = read_image(latency_image)
    entries = []
    for task, name, folder in runs:
        folder = Path(folder)
        loaded = load_model_dir(folder)
        entries.append(
            {
                "task": task,
                "name": name,
                "metrics": json.loads((folder / "metrics.json").read_text(encoding="utf-8")),
                "latency": measure_latency(loaded, image),
                "weights_bytes": (folder / "model.safetensors").stat().st_size,
                "shipped": (shipped or {}).get(name),
            }
        )
    path = Path(out_path)
    path.write_text(render_comparison(entries, defaults=defaults or {}, notes=notes), encoding="utf-8")
    return path
