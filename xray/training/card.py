"""Model cards: a README.md per model folder (from its metrics.json) and the top-level model_card.md comparison.

Everything quoted is read from metrics.json / config.json, never typed by hand, so a card cannot drift from
the evaluation it describes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xray.training.thresholds import render_card_section
from xray.trust.operating import format_threshold

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
    "adult-cxr": (
        "adult-cxr: adult frontal chest X-rays (grey JPEG, long side at most 512 px) with each image's source in "
        "its metadata.csv: `rsna` NORMAL (COVID-19 Radiography Database, Chowdhury et al. 2020, Rahman et al. "
        "2021; adult normals of the RSNA Pneumonia Challenge), `radiography` COVID-19 (same database), `nih` "
        "NORMAL and PNEUMONIA (NIH ChestX-ray14, Wang et al. 2017; labels mined from report text, about 90% "
        "accurate). Its own test split; small sets, so per-source figures carry wide intervals."
    ),
}

LIMITATIONS = [
    "Kermany's NORMAL and PNEUMONIA images are children aged 1-5 from one hospital in Guangzhou, while the "
    "COVID-19 images are all adults (covid-chestxray from publications, adult-cxr's radiography source). A model "
    "can learn age, body size, hospital, scanner or image-processing differences instead of disease; read the "
    "per-source table and shortcut probe before trusting a pooled figure.",
    "The test sets come from the same sources as the training data, and the adult sources are small (61-108 test "
    "images each, wide intervals). Performance on other hospitals, portable/ICU films, or images with devices "
    "and annotations is unknown and probably lower; lateral views are out of scope (the input gate flags them).",
    "Kermany's labels come from expert graders without CT or laboratory confirmation; covid-chestxray images are "
    "taken from publications and websites (often cropped, annotated or compressed) and its labels are as "
    "reported by their sources.",
    "Probabilities are calibrated by temperature scaling on validation data from the same sources; they are "
    "not risks for a patient in another setting.",
    "Grad-CAM heatmaps show which pixels influenced the score, not where the disease is.",
]


#: What the gate's evaluation sets are; the figures themselves come from gate.json (scripts/eval_gate.py --save).
GATE_SETS_TEXT = (
    "Out-of-scope sets are real files that ship with installed packages (scikit-learn, matplotlib, gradio and "
    "scikit-image sample photographs; scikit-image's fundus, histology and microscopy samples; pydicom's CT/MR "
    "test files and matplotlib's MR slice), plus every official test image "
    "with its grey levels inverted; nothing generated is counted as a photograph or a slice. Lateral views come "
    "from the lateral/ folder of the project's development data: the view check is fitted on two thirds of its "
    "patients and measured on the others (held-out patients). The OOD variant (a 224-px JPEG copy of the "
    "image like the training images, unit-length features) was chosen while looking at the validation and "
    "these out-of-scope sets, so their figures are not an independent check. A flagged image still gets its "
    "prediction on request, behind the warning."
)

GATE_FILE = "gate.json"


def _gate_met(row: dict[str, Any]) -> str:
    """`yes (95% CI ...)` / `no (...)` against the row's own goal (`flag < 2%`, `flag <= 5%`, `flag > 95%`)."""
    import re

    from xray.training.metrics import wilson_interval

    if not row.get("n") or row.get("flagged") is None:
        return "not measured"
    low, high = wilson_interval(int(row["flagged"]), int(row["n"]))
    goal = re.fullmatch(r"flag ([<>]=?) (\d+(?:\.\d+)?)%", str(row.get("goal", "")).strip())
    if goal is None:
        return f"- (95% CI {low:.1%}-{high:.1%})"
    share, limit = float(row["share_flagged"]), float(goal[2]) / 100
    met = {"<": share < limit, "<=": share <= limit, ">": share > limit, ">=": share >= limit}[goal[1]]
    digits = 0 if goal[1].startswith(">") else 1
    return ("yes" if met else "no") + f" (95% CI {low:.{digits}%}-{high:.{digits}%})"


def render_gate_section(gate: dict[str, Any], *, level: int = 2) -> list[str]:
    """The "Input gate" section of a card from a gate.json written by `scripts/eval_gate.py --save`."""
    ood = gate.get("ood")
    ood_text = (
        f"OOD threshold {ood['threshold']:.2f}, the {ood['quantile']:.0%} quantile of the Mahalanobis distances "
        f"of {ood.get('n_val', '?')} validation images (the test set sets nothing)"
        if ood
        else "no OOD statistics (image statistics and DICOM header only)"
    )
    lines = [
        "#" * level + ' Input gate ("is this a frontal chest X-ray?")',
        "",
        f"Measured with `{gate.get('command', 'scripts/eval_gate.py')}` on model {gate.get('model')} "
        f"(version {gate.get('version')}), {ood_text}. {GATE_SETS_TEXT}",
        "",
        "| set | n | flagged | share | goal | goal met | reasons (images) |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in gate.get("rows", []):
        share = "n/a" if row.get("share_flagged") is None else f"{row['share_flagged']:.1%}"
        flagged = "n/a" if row.get("flagged") is None else str(row["flagged"])
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(row.get("by_reason", {}).items(), key=lambda kv: -kv[1]))
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(
            f"| {row['set']}{note} | {row['n']} | {flagged} | {share} | {row['goal']} | {_gate_met(row)} | "
            f"{reasons or '-'} |"
        )
    return lines + [""] + _gate_pooled(gate.get("rows", []))


def _gate_pooled(rows: list[dict[str, Any]]) -> list[str]:
    """One line per in-scope goal shared by several sets: the sets pooled, against the same goal."""
    lines = []
    for goal in dict.fromkeys(r.get("goal") for r in rows if r.get("expect_flag") is False):
        same = [r for r in rows if r.get("goal") == goal and r.get("expect_flag") is False and r.get("n")]
        if len(same) < 2 or any(r.get("flagged") is None for r in same):
            continue
        flagged, n = sum(int(r["flagged"]) for r in same), sum(int(r["n"]) for r in same)
        pooled = {"n": n, "flagged": flagged, "share_flagged": flagged / n, "goal": goal}
        lines.append(f"Pooled over the {len(same)} in-scope sets with goal {goal}: {flagged} of {n} flagged "
                     f"({flagged / n:.1%}); goal met: {_gate_met(pooled)}.")
    return lines + [""] if lines else []


def read_gate(folder: str | Path) -> dict[str, Any] | None:
    """The gate.json of a model folder, or None."""
    path = Path(folder) / GATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _epochs(training: dict[str, Any]) -> str:
    steps, per_epoch = training.get("steps_run"), training.get("steps_per_epoch")
    if steps and per_epoch:
        return f"{steps / per_epoch:.2f} epochs ({steps} steps)"
    return f"{training.get('epochs_run')} epochs"


def portable_name(reference: str) -> str:
    """A model or data reference without the machine it was made on.

    `local-dir:/work/main/runs/pneu-adult` -> `pneu-adult`, `../shared/data/kermany-224` -> `kermany-224`;
    `hf-hub:org/name` and plain names stay as they are.
    """
    from xray.inference.models import LOCAL_PREFIX

    text = str(reference)
    if text.startswith(LOCAL_PREFIX):
        text = text[len(LOCAL_PREFIX) :]
    elif ":" in text.split("/")[0]:  # hf-hub:org/name and other schemes are already portable
        return text
    return Path(text.rstrip("/")).name or text


def portable_init(init: str | None, model_name: str | None = None) -> str:
    """The initialisation in words, with portable names (never a development path).

    A model fine-tuned from an earlier version of its own bundled folder (`local-dir:models/pneumonia` for
    `pneumonia`) says so, rather than naming itself as its parent.
    """
    if not init:
        return "not recorded"
    if init == "imagenet":
        return "ImageNet weights"
    if init == "scratch":
        return "random (from scratch)"
    parent = portable_name(init)
    own = portable_name(model_name) if model_name else None
    if own and parent == own:
        return f"fine-tuned from an earlier version of {own} (its previous weights)"
    if init.startswith("local-dir:"):
        return f"fine-tuned from the training run {parent}"
    return f"fine-tuned from {parent}"


def _init(init: str | None, model_name: str | None = None) -> str:
    if init in ("imagenet", "scratch"):
        return "ImageNet weights" if init == "imagenet" else "random (trained from scratch)"
    return f"{portable_init(init, model_name)}; its classifier head replaced where the classes differ"


def _thr(value: Any) -> str:
    return "n/a" if value is None else format_threshold(value)


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
            blocks.append((f"{format_threshold(result['threshold'])} (chosen on validation)", test["at_threshold"]))
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


def _share(count: int, n: int) -> str:
    """`57: 83.8% (73.3%-90.7%)`: a count of n, its share and the share's Wilson 95% interval."""
    from xray.training.metrics import wilson_interval

    if not n:
        return "-"
    low, high = wilson_interval(count, n)
    return f"{count}: {_fmt(count / n, pct=True)} ({_fmt(low, pct=True)}-{_fmt(high, pct=True)})"


def render_per_source(result: dict[str, Any], *, level: int = 2) -> list[str]:
    """The per-data-source table and the shortcut probe of a metrics.json (nothing when it has no `per_source`)."""
    table = result.get("per_source")
    if not table or not table.get("sources"):
        return []
    from xray.training.evaluate import per_source_columns

    labels = result["label_names"]
    columns = per_source_columns(labels)
    threshold = table.get("threshold")
    decision = "highest probability" if threshold is None else f"P({labels[1]}) >= {format_threshold(threshold)}"
    lines = [
        "#" * level + " Results per data source (test set)",
        "",
        f"Every figure for each data source on its own and pooled (decision: {decision}). "
        f"{table.get('ci_method', '95% CIs')}. A source holding one class has no ROC AUC (n/a) and only the "
        "figures that class defines.",
        "",
        "| source | n | " + " | ".join(header for header, _, _ in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, group in [*table["sources"].items(), ("**pooled**", table.get("pooled"))]:
        if not group:
            continue
        counts = ", ".join(f"{k} {v}" for k, v in group["counts"].items() if v)
        cells = [_with_ci(group, key, pct=pct) for _, key, pct in columns]
        lines.append(f"| {name} | {group['n']} ({counts}) | " + " | ".join(cells) + " |")
    probe = (result.get("shortcut_probe") or {}).get("sources")
    if probe:
        lines += [
            "",
            "#" * (level + 1) + " Shortcut probe",
            "",
            "How often the model predicts each class, per data source and true class (count: share, Wilson 95% CI). "
            "A large share in a wrong column for one source only (adult normals called COVID-19, say) points to a "
            "shortcut (age, hospital, image processing) rather than disease.",
            "",
            "| source | true class | n | " + " | ".join(f"called {name}" for name in labels) + " |",
            "|---|---|---|" + "---|" * len(labels),
        ]
        for source, rows in probe.items():
            for true, row in rows.items():
                cells = [_share(int(row["predicted"].get(name, 0)), int(row["n"])) for name in labels]
                lines.append(f"| {source} | {true} | {row['n']} | " + " | ".join(cells) + " |")
    return lines + [""]


def render_sampling(data: dict[str, Any]) -> list[str]:
    """How the training data were drawn: sampling rule, label map and images per data source and split."""
    if not isinstance(data, dict):  # `python -m xray evaluate --out` writes the list of --data paths
        return []
    lines = []
    if data.get("sampling"):
        lines.append(f"- Sampling during training: {data['sampling']}.")
    if data.get("label_map"):
        lines.append(f"- Label map: `{data['label_map']}` (labels renamed before splitting).")
    per_split = data.get("data_sources") or {}
    names = list(dict.fromkeys(name for split in per_split.values() for name in split))
    if names:
        lines += [
            "",
            "| split | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for split in ("train", "val", "test"):
            if split in per_split:
                lines.append(f"| {split} | " + " | ".join(str(per_split[split].get(n, 0)) for n in names) + " |")
    return lines


def _input_step(config: dict[str, Any], training: dict[str, Any]) -> str:
    """The card's words for config.json `input_jpeg_quality` ("" without one)."""
    quality = config.get("input_jpeg_quality")
    if not quality:
        return ""
    origin = training.get("reevaluated_from")
    added = f" (added after training: `train.py --reevaluate` of run {portable_name(origin)})" if origin else ""
    return (f"; every input then passes through JPEG at quality {quality} (config.json `input_jpeg_quality`), as "
            f"the 224-px Kermany training copies were{added}")


def render_model_card(
    config: dict[str, Any], result: dict[str, Any], gate: dict[str, Any] | None = None, *, name: str | None = None
) -> str:
    """The README.md text for a model folder, from its config.json, metrics.json and (when measured) gate.json.

    `name` is the model's own (folder) name, so that a model fine-tuned from an earlier version of itself says so.
    """
    labels = result["label_names"]
    training = result.get("training", {})
    data = result.get("data", {})
    sources = " ".join(portable_name(s) for s in data.get("sources", []))
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
    ]
    from xray.inference.models import config_caveat

    caveat = config_caveat(config)
    if caveat:
        lines += [f"**Caveat (shown with every prediction of this model):** {caveat}", ""]
    lines += [
        "## Model",
        "",
        f"- Architecture: timm `{result['architecture']}`, {result.get('num_parameters', 0) / 1e6:.2f} M parameters, "
        f"weights {result.get('weights_bytes', 0) / 1e6:.1f} MB" + (" (stored in fp16)" if fp16 else "") + ".",
        f"- Classes (output order): {', '.join(labels)}.",
        f"- Initialisation: {_init(training.get('init'), name)}; "
        f"input {training.get('data_config', {}).get('input_size')} "
        f"(whole image resized, no crop; mean/std in config.json){_input_step(config, training)}.",
        f"- Training: AdamW (lr {training.get('lr')}, weight decay {training.get('weight_decay')}), "
        f"{training.get('schedule')} schedule, batch {training.get('batch_size')}, class imbalance by "
        f"{training.get('balance')}, augmentation rotation +-{training.get('rotation')} deg, shift "
        f"{training.get('translate')}, zoom +-{training.get('zoom')}, "
        f"flips {'on' if training.get('hflip') else 'off'}, "
        f"brightness/contrast +-{training.get('intensity', 0)}; "
        f"{_epochs(training)} run"
        + (f" with the stem and first {training['freeze']} stages frozen" if training.get("freeze") else "")
        + f", best validation AUC {_fmt(training.get('best_val_auc'), 4)} at "
        f"epoch {training.get('best_epoch')} ({training.get('stop_reason')}); "
        f"{_fmt(training.get('seconds_per_epoch'), 0)} s per epoch on {training.get('device')} "
        f"({training.get('threads')} threads).",
        f"- Temperature {_fmt(result.get('temperature'))} (fitted on validation)"
        + (
            f"; operating threshold on P({labels[1]}) = {format_threshold(result['threshold'])}, chosen on "
            f"validation by the rule: {validation.get('threshold', {}).get('rule')}."
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
    lines += render_sampling(data)
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
    ]
    lines += render_per_source(result)
    lines += render_card_section(result)
    if gate:
        lines += render_gate_section(gate)
    lines += ["## Limitations", ""]
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
    path.write_text(render_model_card(config, result, read_gate(folder), name=folder.name), encoding="utf-8")
    return path


def render_comparison(
    entries: Sequence[dict[str, Any]],
    *,
    defaults: dict[str, str],
    notes: Sequence[str] = (),
    sections: dict[str, Sequence[str]] | None = None,
) -> str:
    """The top-level model_card.md: every trained backbone side by side.

    Args:
        entries: one dict per trained model: `name`, `task`, `metrics` (metrics.json), `latency` (p50/p90 ms),
            `weights_bytes`, `shipped` (bundled folder name or None), optionally `gate` (gate.json).
        defaults: task -> one paragraph saying which model is the default and why.
        notes: extra paragraphs (e.g. what could not be done here).
        sections: task -> Markdown lines put after the task's default paragraph (the backbone comparison).
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
            head = (
                f"| {e['name']}{' **(default)**' if e.get('shipped') else ''} | "
                f"{portable_init(tr.get('init'), e.get('shipped'))} | {_epochs(tr)} |"
            )
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
                    f"{_with_ci(d, 'accuracy')} | {_thr(m.get('threshold'))} | {_fmt(m.get('temperature'), 2)} |" + tail
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
        lines += list((sections or {}).get(task, ()))
        for e in rows:
            per_source = render_per_source(e["metrics"], level=4)
            if per_source:
                lines += [f"### {e['name']} per data source", ""]
                lines += render_sampling(e["metrics"].get("data") or {}) + [""]
                lines += per_source
            lines += render_card_section(e["metrics"], level=4)
        for e in rows:
            if e.get("gate"):
                lines += render_gate_section(e["gate"], level=3)
    lines += ["## Notes", ""] + [f"- {note}" for note in notes] + ["", "## Limitations", ""]
    lines += [f"- {text}" for text in LIMITATIONS] + [""]
    return "\n".join(lines)


def _shipped_gate(folder: Path, bundled: str | None) -> dict[str, Any] | None:
    """gate.json of a shipped model: measured on the bundled copy in models/ (or found in the run folder)."""
    if bundled is None:
        return None
    from xray.inference.models import resolve_model_dir

    return read_gate(folder) or read_gate(resolve_model_dir(bundled)[0])


def build_comparison(
    runs: Sequence[tuple[str, str, str | Path]],
    out_path: str | Path,
    *,
    latency_image: str | Path,
    shipped: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
    notes: Sequence[str] = (),
    sections: dict[str, Sequence[str]] | None = None,
) -> Path:
    """Measure every run's one-image CPU latency and write the comparison model_card.md.

    Args:
        runs: (task, display name, model folder) per trained model.
        out_path: where to write model_card.md.
        latency_image: an image file to time `xray.inference.predict.predict` on (read with
            `xray.imaging.io.read_image`).
        shipped: display name -> bundled folder name for the models shipped as defaults.
        defaults: task -> paragraph saying which model is the default and why.
        notes: extra paragraphs.
        sections: task -> Markdown lines after the task's default paragraph.
    """
    from xray.imaging.io import read_image
    from xray.inference.models import load_model_dir
    from xray.training.evaluate import measure_latency

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
                "gate": _shipped_gate(folder, (shipped or {}).get(name)),
            }
        )
    path = Path(out_path)
    text = render_comparison(entries, defaults=defaults or {}, notes=notes, sections=sections)
    path.write_text(text, encoding="utf-8")
    return path
