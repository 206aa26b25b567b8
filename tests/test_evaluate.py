"""Evaluation on real images through the real model loading path: metrics.json, plots, calibration, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from xray.inference.models import load_model_dir
from xray.inference.predict import extract_features
from xray.training.data import load_pixels, load_samples
from xray.training.evaluate import evaluate_model, predict_logits
from xray.training.metrics import softmax


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


@pytest.fixture(scope="module")
def kermany_images(shared_data):
    samples = load_samples(shared_data / "kermany-val-fullres")
    pixels = load_pixels(samples, (224, 224), "bicubic")
    y = np.array([0 if s.label == "NORMAL" else 1 for s in samples])
    return pixels, y


def test_evaluate_writes_metrics_plots_and_calibration(model_copy, kermany_images):
    pixels, y = kermany_images
    loaded = load_model_dir(model_copy)
    val_idx, test_idx = np.arange(0, 16, 2), np.arange(1, 16, 2)
    result = evaluate_model(
        loaded,
        [pixels[i] for i in test_idx],
        y[test_idx],
        val_images=[pixels[i] for i in val_idx],
        y_val=y[val_idx],
        out_dir=model_copy,
        n_boot=50,
        history=[{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.5, "val_accuracy": 0.5}],
    )
    written = json.loads((model_copy / "metrics.json").read_text())
    assert written["test"]["n"] == 8 and written["test"]["counts"] == {"NORMAL": 4, "PNEUMONIA": 4}
    for name in ("roc.png", "reliability.png", "confusion.png", "curves.png"):
        assert (model_copy / name).stat().st_size > 5000, name
    test = written["test"]
    assert set(test) >= {"at_default", "at_threshold", "calibration", "roc"}
    assert test["at_default"]["threshold"] == 0.5
    assert sum(map(sum, test["at_threshold"]["confusion"])) == 8
    for key in ("accuracy", "sensitivity", "specificity", "fpr", "fnr", "precision", "f1", "auc"):
        assert key in test["at_default"]["value"] and key in test["at_default"]["ci95"], key
    assert written["validation"]["roc"]["fpr"][0] == 0.0
    assert set(written["validation"]["threshold"]) == {"threshold", "rule", "sensitivity", "specificity"}
    # temperature and threshold went to config.json and come back through the loader
    reloaded = load_model_dir(model_copy)
    assert reloaded.temperature == pytest.approx(result["temperature"])
    assert reloaded.threshold == pytest.approx(result["validation"]["threshold"]["threshold"])
    assert reloaded.positive_label == "PNEUMONIA"
    assert test["calibration"]["ece_before"] >= 0 and test["calibration"]["ece_after"] >= 0


def test_logits_and_features_match_the_network(tiny_model_dir, kermany_images):
    from xray.imaging.transforms import build_transform

    pixels, _ = kermany_images
    loaded = load_model_dir(tiny_model_dir)
    logits = predict_logits(loaded, pixels[:3], batch_size=2)
    transform = build_transform(loaded.data_config, train=False)
    with torch.inference_mode():
        direct = loaded.model(torch.stack([transform(p) for p in pixels[:3]])).numpy()
    np.testing.assert_allclose(logits, direct, atol=1e-4)
    features = extract_features(loaded, pixels[:3])
    assert features.shape == (3, loaded.model.get_classifier().in_features)
    # the classifier applied to the penultimate features gives the logits back
    with torch.inference_mode():
        again = loaded.model.get_classifier()(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(again, logits, atol=1e-4)


def test_three_class_evaluation_reports_each_class(tiny_model_dir_3class, shared_data):
    loaded = load_model_dir(tiny_model_dir_3class)
    samples = [s for s in load_samples(shared_data / "covid-chestxray")][:40]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3))
    from xray.training.evaluate import evaluate_arrays

    labels = loaded.label_names
    y = np.array([labels.index(s.label) for s in samples])
    result = evaluate_arrays(y, logits, labels, temperature=1.0, threshold=None, n_boot=20)
    assert "at_threshold" not in result
    assert set(result["roc"]) == set(labels)
    value = result["at_default"]["value"]
    for name in labels:
        if result["counts"][name]:
            assert f"sensitivity/{name}" in value
    assert np.isclose(softmax(logits).sum(axis=1), 1).all()


def test_evaluate_command_prints_json(tiny_model_dir, kermany_fullres, tmp_path, capsys):
    from xray.__main__ import main

    csv_path = tmp_path / "few.csv"
    csv_path.write_text("".join(f"{p},{p.parent.name}\n" for p in kermany_fullres[:3] + kermany_fullres[-3:]))
    code = main(
        [
            "evaluate",
            "--model",
            f"local-dir:{tiny_model_dir}",
            "--data",
            str(csv_path),
            "--split",
            "all",
            "--bootstrap",
            "20",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test"]["n"] == 6 and result["label_names"] == ["NORMAL", "PNEUMONIA"]
    assert "auc" in result["test"]["at_default"]["value"]
    # the stored threshold (0.5 default) is used, nothing is refitted on the evaluated data
    assert result["threshold"] == 0.5 and "validation" not in result


# ---------------------------------------------------------------- per data source

#: Images per (source, label) copied from adult-cxr/test: two NIH classes, one class each for rsna and radiography.
ADULT_PICK = {("rsna", "NORMAL"): 3, ("nih", "NORMAL"): 2, ("nih", "PNEUMONIA"): 2, ("radiography", "COVID-19"): 3}


@pytest.fixture(scope="module")
def mixed_data(shared_data, tmp_path_factory):
    """A small real mixed set: an adult-cxr-like tree (metadata.csv naming each image's source, one training image
    that must not be scored) and a kermany-224-like `test/` folder; returns (adult/test, kermany/test, file->source).
    """
    import csv

    root = tmp_path_factory.mktemp("mixed")
    adult, kermany = root / "adult", root / "kermany-224" / "test"
    with (shared_data / "adult-cxr" / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picked, left = [], dict(ADULT_PICK)
    for row in rows:
        key = (row["source"], row["label"])
        if row["split"] == "test" and left.get(key):
            left[key] -= 1
            picked.append(row)
    picked.sort(key=lambda r: list(ADULT_PICK).index((r["source"], r["label"])))  # sources in ADULT_PICK's order
    picked.append(next(r for r in rows if r["split"] == "train" and r["source"] == "nih"))
    source_of = {}
    for row in picked:
        (adult / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "adult-cxr" / row["path"], adult / row["path"])
        source_of[(adult / row["path"]).name] = row["source"]
    with (adult / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    for label in ("NORMAL", "PNEUMONIA"):
        (kermany / label).mkdir(parents=True)
        for path in sorted((shared_data / "kermany-224" / "test" / label).iterdir())[:2]:
            shutil.copy(path, kermany / label / path.name)
            source_of[path.name] = "kermany-224"
    return adult / "test", kermany, source_of


def _evaluate_json(capsys, *argv: str) -> dict:
    from xray.__main__ import main

    assert main(["evaluate", *argv, "--bootstrap", "20", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_command_reports_each_data_source(tiny_model_dir, mixed_data, capsys):
    from xray.training.data import merge_labels
    from xray.training.evaluate import load_evaluation_samples
    from xray.training.metrics import wilson_interval

    adult, kermany, source_of = mixed_data
    model = f"local-dir:{tiny_model_dir}"
    result = _evaluate_json(
        capsys, "--model", model, "--data", str(adult), "--data", str(kermany), "--label-map", "COVID-19=PNEUMONIA"
    )
    table, probe = result["per_source"], result["shortcut_probe"]
    rows = table["sources"]
    # adult-cxr's metadata.csv names the source per image; the kermany test/ folder is named after its parent
    assert list(rows) == ["rsna", "nih", "radiography", "kermany-224"]
    expected = {
        "rsna": {"NORMAL": 3, "PNEUMONIA": 0},
        "nih": {"NORMAL": 2, "PNEUMONIA": 2},
        "radiography": {"NORMAL": 0, "PNEUMONIA": 3},  # COVID-19 counted as PNEUMONIA through the label map
        "kermany-224": {"NORMAL": 2, "PNEUMONIA": 2},
    }
    assert {name: row["counts"] for name, row in rows.items()} == expected
    assert {name: row["n"] for name, row in rows.items()} == {"rsna": 3, "nih": 4, "radiography": 3, "kermany-224": 4}
    # the training image in the metadata is not scored; pooled n is the sum of the sources
    assert table["pooled"]["n"] == result["test"]["n"] == 14 == sum(row["n"] for row in rows.values())
    assert result["label_map"] == {"COVID-19": "PNEUMONIA"} and table["threshold"] == result["threshold"] == 0.5
    # one-class sources: what is defined is reported, AUC is null
    rsna, radiography, nih = rows["rsna"], rows["radiography"], rows["nih"]
    assert rsna["value"]["auc"] is None and rsna["value"]["sensitivity"] is None
    assert rsna["value"]["accuracy"] == rsna["value"]["specificity"]
    assert radiography["value"]["auc"] is None and radiography["value"]["specificity"] is None
    assert radiography["value"]["accuracy"] == radiography["value"]["sensitivity"]
    assert nih["value"]["auc"] is not None and 0 <= nih["value"]["auc"] <= 1
    # proportions carry Wilson intervals of their own counts
    correct = int(np.trace(np.array(rsna["confusion"])))
    assert rsna["value"]["accuracy"] == pytest.approx(correct / 3)
    assert rsna["ci95"]["accuracy"] == pytest.approx(list(wilson_interval(correct, 3)))
    # the pooled row is the pooled test figures at the same threshold
    assert table["pooled"]["value"]["accuracy"] == pytest.approx(result["test"]["at_threshold"]["value"]["accuracy"])
    assert table["pooled"]["value"]["auc"] == pytest.approx(result["test"]["at_default"]["value"]["auc"])

    # the probe: per source, per true class, how often each class is predicted
    assert list(probe["sources"]) == list(rows)
    assert set(probe["sources"]["rsna"]) == {"NORMAL"} and set(probe["sources"]["nih"]) == {"NORMAL", "PNEUMONIA"}
    for name, by_true in probe["sources"].items():
        assert sum(row["n"] for row in by_true.values()) == rows[name]["n"]
        for true, row in by_true.items():
            assert sum(row["predicted"].values()) == row["n"] == rows[name]["counts"][true]
            assert sum(row["share"].values()) == pytest.approx(1.0)
    # ... and its counts are the model's own decisions on those files, scored independently here
    loaded = load_model_dir(tiny_model_dir)
    samples = merge_labels(load_evaluation_samples(adult), {"COVID-19": "PNEUMONIA"})
    samples += load_evaluation_samples(kermany)
    probs = softmax(predict_logits(loaded, load_pixels(samples, (224, 224), "bicubic")), loaded.temperature)
    called = probs[:, 1] >= 0.5
    keys = [(source_of[s.source.name], s.label) for s in samples]
    for name, by_true in probe["sources"].items():
        for true, row in by_true.items():
            mine = [c for key, c in zip(keys, called, strict=True) if key == (name, true)]
            assert row["predicted"]["PNEUMONIA"] == sum(mine), (name, true)


def test_evaluate_command_prints_the_table_and_probe(tiny_model_dir, mixed_data, capsys):
    from xray.__main__ import main

    adult, kermany, _ = mixed_data
    code = main(["evaluate", "--model", f"local-dir:{tiny_model_dir}", "--data", str(adult), "--data", str(kermany),
                 "--label-map", "COVID-19=PNEUMONIA", "--bootstrap", "0"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "per data source (at threshold 0.500):" in text and "Wilson score intervals" in text
    assert "    rsna (n=3: NORMAL 3)" in text and "    pooled (n=14: NORMAL 7, PNEUMONIA 7)" in text
    probe = [line for line in text.splitlines() if " called: " in line]
    assert [line.split(" called: ")[0].strip() for line in probe] == [
        "rsna NORMAL (n=3)", "nih NORMAL (n=2)", "nih PNEUMONIA (n=2)", "radiography PNEUMONIA (n=3)",
        "kermany-224 NORMAL (n=2)", "kermany-224 PNEUMONIA (n=2)",
    ]  # fmt: skip


def test_evaluate_command_asks_for_a_label_map(tiny_model_dir, mixed_data, caplog):
    from xray.__main__ import main

    adult, _, _ = mixed_data
    assert main(["evaluate", "--model", f"local-dir:{tiny_model_dir}", "--data", str(adult), "--json"]) == 2
    assert "--label-map COVID-19=PNEUMONIA" in caplog.text


def test_three_class_model_per_source_and_probe(tiny_model_dir_3class, mixed_data, capsys):
    adult, kermany, _ = mixed_data
    result = _evaluate_json(capsys, "--model", f"local-dir:{tiny_model_dir_3class}", "--data", str(adult),
                            "--data", str(kermany))  # fmt: skip
    rows = result["per_source"]["sources"]
    assert result["per_source"]["threshold"] is None  # argmax
    assert rows["radiography"]["counts"] == {"NORMAL": 0, "PNEUMONIA": 0, "COVID-19": 3}
    assert rows["radiography"]["value"]["auc"] is None
    assert rows["radiography"]["value"]["accuracy"] == rows["radiography"]["value"]["sensitivity/COVID-19"]
    probe = result["shortcut_probe"]["sources"]
    assert set(probe["radiography"]) == {"COVID-19"} and set(probe["radiography"]["COVID-19"]["predicted"]) == {
        "NORMAL", "PNEUMONIA", "COVID-19"}  # fmt: skip
    assert sum(rows[name]["n"] for name in rows) == result["per_source"]["pooled"]["n"] == 14


def test_per_source_metrics_on_arrays_never_crash_on_one_class():
    from xray.training.evaluate import per_source_metrics, shortcut_probe

    y = np.array([0, 0, 0, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.7, 0.2, 0.9, 0.3, 0.4, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    sources = ["a", "a", "a", "b", "b", "c", "c"]
    table = per_source_metrics(y, probs, ["NORMAL", "PNEUMONIA"], sources, 0.5, n_boot=30)
    a, b, c = (table["sources"][k] for k in "abc")
    assert a["n"] == 3 and a["value"]["specificity"] == pytest.approx(2 / 3) and np.isnan(a["value"]["auc"])
    assert a["ci95"]["specificity"] == pytest.approx(a["ci95"]["accuracy"])
    assert b["value"]["sensitivity"] == 0.5 and np.isnan(b["value"]["specificity"])
    assert c["value"]["auc"] == 1.0 and c["value"]["accuracy"] == 1.0
    # ECE per source, top-label: a's confidences 0.9 (right), 0.7 (wrong), 0.8 (right) -> (0.1 + 0.7 + 0.2) / 3
    assert a["value"]["ece"] == pytest.approx(1 / 3)
    assert c["value"]["ece"] == pytest.approx((0.4 + 0.2) / 2)  # 0.6 and 0.8 confident, both right
    low, high = c["ci95"]["accuracy"]
    assert 0.1 < low < 0.5 and high == pytest.approx(1.0)  # 2 of 2 correct: Wilson, not a bootstrap's degenerate [1, 1]
    probe = shortcut_probe(table, ["NORMAL", "PNEUMONIA"])["sources"]
    assert probe["a"] == {"NORMAL": {"n": 3, "predicted": {"NORMAL": 2, "PNEUMONIA": 1},
                                     "share": {"NORMAL": 2 / 3, "PNEUMONIA": 1 / 3},
                                     "ci95": probe["a"]["NORMAL"]["ci95"]}}  # fmt: skip
    assert table["pooled"]["n"] == 7 and table["pooled"]["confusion"] == [[3, 1], [1, 2]]
    with pytest.raises(ValueError, match="3 data sources for 7 images"):
        per_source_metrics(y, probs, ["NORMAL", "PNEUMONIA"], ["a"] * 3, 0.5, n_boot=0)
