"""The backbone comparison: the selection rule on validation, the real CLI on real tiny models, the card table."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.generated_data import children_and_adults
from xray.training import backbones as B
from xray.web.backbones import markdown_lines


def _row(name: str, arch: str, pooled: float, sources: dict[str, tuple[float | None, list[int]]]) -> dict:
    return {
        "name": name,
        "architecture": arch,
        "validation": {
            "pooled": {"auc": pooled},
            "sources": {s: {"auc": auc, "accuracy": float(np.mean(c)), "correct": c}
                        for s, (auc, c) in sources.items()},  # fmt: skip
        },
    }


def _calls(right: int, wrong: int) -> list[int]:
    return [1] * right + [0] * wrong


SHIPPED = _row("shipped", "efficientnet_lite0", 0.95,
               {"kermany-224": (0.97, _calls(18, 2)), "nih": (0.70, _calls(12, 8)), "rsna": (None, _calls(16, 4))})


def test_rule_needs_no_significant_loss_on_any_source_and_a_higher_mean_auc():
    # one rsna image lost (80% -> 75%): not significant, so it passes; the rule as first written rejected it
    long = _row("lite0-long", "efficientnet_lite0", 0.94, {"kermany-224": (0.99, _calls(18, 2)),
                                                           "nih": (0.85, _calls(12, 8)),
                                                           "rsna": (None, _calls(15, 5))})  # fmt: skip
    # ten kermany images lost and none gained (McNemar p = 0.002): significantly worse there, whatever its AUC
    worse = _row("lite1", "efficientnet_lite1", 0.98,
                 {"kermany-224": (0.99, _calls(8, 12)), "nih": (0.90, _calls(14, 6)), "rsna": (None, _calls(16, 4))})
    low_auc = _row("r18", "resnet18", 0.96, {"kermany-224": (0.95, _calls(18, 2)), "nih": (0.70, _calls(12, 8)),
                                             "rsna": (None, _calls(16, 4))})  # fmt: skip
    mnv3 = _row("mnv3", "mobilenetv3_large_100", 0.96,
                {"kermany-224": (0.985, _calls(18, 2)), "nih": (0.80, _calls(12, 8)), "rsna": (None, _calls(16, 4))})
    decision = B.choose([long, worse, low_auc, mnv3], SHIPPED)
    assert decision["fails"]["lite0-long"] == [] and decision["best"] == "lite0-long"
    assert decision["fails_as_written"]["lite0-long"] == ["pooled AUC 0.9400 < 0.9500", "rsna: accuracy 75.0% < 80.0%"]
    assert decision["paired"]["lite0-long"]["rsna"] == {"gained": 0, "lost": 1, "p": 1.0}
    (loss,) = decision["fails"]["lite1"]
    assert loss.startswith("kermany-224: accuracy 40.0% vs 90.0%, 10 images lost and 0 gained, McNemar p = 0.002")
    assert decision["fails"]["r18"] == ["mean per-source AUC 0.825 <= 0.835"]
    assert decision["mean_auc"]["lite0-long"] == pytest.approx(0.92) and decision["shipped_mean_auc"] == 0.835
    assert decision["sources_with_both_classes"] == ["kermany-224", "nih"]
    # the MobileNetV3 passes but is 0.05 AUC short on nih: not the default, the gap is recorded per source
    (m,) = decision["mobilenet"]
    assert m["qualifies"] and not m["within_margin"]
    assert m["auc_gap"] == pytest.approx({"kermany-224": 0.005, "nih": 0.05})
    assert decision["default"] == "lite0-long"
    # within the margin everywhere, it becomes the default
    close = _row("mnv3", "mobilenetv3_large_100", 0.96,
                 {"kermany-224": (0.985, _calls(18, 2)), "nih": (0.845, _calls(12, 8)), "rsna": (None, _calls(16, 4))})
    assert B.choose([long, close], SHIPPED)["default"] == "mnv3"
    # nothing qualifies: the shipped model stays
    nothing = B.choose([low_auc], SHIPPED)
    assert nothing["default"] == "shipped" and nothing["best"] is None


def test_mcnemar_is_exact_and_refuses_unpaired_calls():
    assert B.mcnemar([1, 1, 0], [1, 1, 0]) == {"gained": 0, "lost": 0, "p": 1.0}
    test = B.mcnemar([0] * 6 + [1] * 4, [1] * 10)
    assert (test["gained"], test["lost"]) == (0, 6) and test["p"] == pytest.approx(2 * 0.5**6)
    with pytest.raises(ValueError, match="different lengths"):
        B.mcnemar([1, 0], [1])


@pytest.fixture()
def compared(tiny_model_dir: Path, tiny_model_dir_3class: Path, tmp_path: Path) -> dict:
    """Generated children and adults, and three real tiny models that 'trained' on them (same recorded split)."""
    import timm

    from xray.inference.models import save_model, update_config
    from xray.training.data import load_samples, make_splits
    from xray.training.evaluate import per_source_metrics

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    folders = children_and_adults(data, rng, adult_source="nih", per_class=20, size=48)
    splits = make_splits([load_samples(f) for f in folders], label_names=["NORMAL", "PNEUMONIA"], seed=0)
    recorded = {s: dict(Counter(x.data_source for x in getattr(splits, s))) for s in ("train", "val")}
    y = np.array([0, 1] * 10)
    probs = np.stack([1 - rng.random(20), rng.random(20)], axis=1)
    probs /= probs.sum(1, keepdims=True)
    per_source = per_source_metrics(y, probs, ["NORMAL", "PNEUMONIA"], ["kermany-224"] * 10 + ["nih"] * 10, 0.5,
                                    n_boot=20)  # fmt: skip
    models = {}
    import torch

    torch.manual_seed(1)
    resnet = save_model(timm.create_model("resnet18", num_classes=2), tmp_path / "r18",
                        label_names=["NORMAL", "PNEUMONIA"])  # fmt: skip
    for name, source_dir, init, teacher in (("mnv3", tiny_model_dir, "scratch", "local-dir:/runs/lite0-long"),
                                            ("r18", resnet, "scratch", None),
                                            ("shipped", tiny_model_dir, "imagenet", None),
                                            ("three", tiny_model_dir_3class, "scratch", None)):  # fmt: skip
        folder = shutil.copytree(source_dir, tmp_path / f"m-{name}")
        if name != "three":
            update_config(folder, threshold=0.5, positive_label="PNEUMONIA")
        training = {"seed": 0, "init": init, "teacher": teacher, "epochs_run": 2, "steps_run": 10, "batch_size": 32,
                    "train_seconds": 120.0, "precision": "fp32"}  # fmt: skip
        metrics = {"data": {"sources": folders, "data_sources": recorded}, "training": training,
                   "per_source": per_source}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        models[name] = folder
    return {"models": models, "splits": splits, "data": data, "tmp": tmp_path}


def test_cli_scores_every_run_on_the_reference_validation_split_and_writes_the_table(compared: dict):
    from xray.__main__ import main
    from xray.inference.models import load_model_dir
    from xray.training.thresholds import score

    models, splits = compared["models"], compared["splits"]
    out = compared["tmp"] / "backbones.json"
    image = next((compared["data"] / "kermany-224" / "train" / "NORMAL").glob("*.png"))
    args = ["backbones", "--reference", f"local-dir:{models['mnv3']}",
            "--run", f"mnv3 distilled=local-dir:{models['mnv3']}", "--run", f"r18 scratch=local-dir:{models['r18']}",
            "--shipped", f"shipped=local-dir:{models['shipped']}",
            "--latency-image", str(image), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = json.loads(out.read_text())
    assert table["validation_counts"] == dict(Counter(s.data_source for s in splits.val))
    mnv3, r18 = table["runs"]
    # the validation figures are the real models' on the rebuilt split, at each model's threshold
    loaded = load_model_dir(models["r18"])
    p = score(loaded, splits.val)
    y = np.array([s.label == "PNEUMONIA" for s in splits.val], dtype=int)
    assert r18["validation"]["pooled"]["accuracy"] == pytest.approx(float(((p >= 0.5) == y).mean()))
    nih = np.array([s.data_source == "nih" for s in splits.val])
    assert r18["validation"]["sources"]["nih"]["n"] == int(nih.sum())
    assert mnv3["init"] == "scratch, distilled from lite0-long" and r18["init"] == "scratch"
    assert mnv3["training_images"] == 320 and mnv3["images_per_second"] == pytest.approx(320 / 120)
    assert mnv3["latency"]["p50_ms"] > 0
    assert mnv3["weights_bytes"] == (models["mnv3"] / "model.safetensors").stat().st_size
    assert table["shipped"]["shipped"] and table["shipped"]["init"] == "ImageNet"
    # the shipped model is the same network as the distilled run here: the same calls, but not a higher mean AUC
    assert table["decision"]["paired"]["mnv3 distilled"]["nih"]["gained"] == 0
    assert table["decision"]["fails"]["mnv3 distilled"][0].startswith("mean per-source AUC")
    lines = markdown_lines(table)
    text = "\n".join(lines)
    assert "| model | init | val AUC (mean per source) | test AUC kermany-224 | test AUC nih |" in text
    row = next(line for line in lines if line.startswith("| r18 scratch"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "scratch" and cells[-1] == "2\u00a0epochs, 2\u00a0min, 2.7\u00a0img/s (fp32)"
    assert cells[-2].endswith(f", {r18['weights_bytes'] / 1e6:.1f}\u00a0MB")
    assert "shipped (shipped before)" in text and "- r18 scratch: " in text


def test_a_run_trained_on_another_split_is_refused(compared: dict, caplog: pytest.LogCaptureFixture):
    from xray.__main__ import main

    models = compared["models"]
    metrics = json.loads((models["r18"] / "metrics.json").read_text())
    metrics["data"]["data_sources"]["val"]["nih"] += 1
    (models["r18"] / "metrics.json").write_text(json.dumps(metrics))
    out = compared["tmp"] / "backbones.json"
    code = main(["backbones", "--reference", f"local-dir:{models['mnv3']}", "--run", f"r18=local-dir:{models['r18']}",
                 "--shipped", f"shipped=local-dir:{models['shipped']}", "--out", str(out)])  # fmt: skip
    assert code == 2 and not out.exists()
    assert "r18 was trained on another val split" in caplog.text and "same data, label map" in caplog.text


def test_models_page_section_shows_every_run_and_the_verdicts(compared: dict, tmp_path: Path):
    from xray.__main__ import main
    from xray.web.backbones import backbones_html

    models = compared["models"]
    out = tmp_path / "backbones.json"
    assert main(["backbones", "--reference", f"local-dir:{models['mnv3']}", "--run", f"r18=local-dir:{models['r18']}",
                 "--shipped", f"shipped=local-dir:{models['shipped']}", "--out", str(out)]) == 0  # fmt: skip
    table = json.loads(out.read_text())
    page = backbones_html(out)
    assert '<table id="xray-models-backbones">' in page and "<th>test AUC nih</th>" in page
    default = table["decision"]["default"]
    assert f"{default} (default)" in page or f"{default} (shipped before) (default)" in page
    verdict = "passes the rule" if not table["decision"]["fails"]["r18"] else "fails: "
    assert f"<li>r18: {verdict}" in page and "(rule as first written: " in page
    # no file: the page says how to make one instead of an empty table
    missing = backbones_html(tmp_path / "none.json")
    assert "No comparison is bundled" in missing and "python -m xray backbones --out" in missing


def test_a_three_class_model_is_compared_by_argmax_and_macro_auc(compared: dict, tmp_path: Path):
    from xray.__main__ import main
    from xray.inference.models import load_model_dir
    from xray.training import metrics as M
    from xray.training.data import load_pixels
    from xray.training.evaluate import predict_logits

    three, splits = compared["models"]["three"], compared["splits"]
    out = tmp_path / "three.json"
    assert main(["backbones", "--reference", f"local-dir:{three}", "--run", f"candidate=local-dir:{three}",
                 "--shipped", f"shipped=local-dir:{three}", "--out", str(out)]) == 0  # fmt: skip
    row = json.loads(out.read_text())["runs"][0]["validation"]
    loaded = load_model_dir(three)
    labels = loaded.label_names
    config = loaded.data_config
    images = load_pixels(splits.val, tuple(config["input_size"][1:]), str(config["interpolation"]), progress=False)
    probs = M.softmax(predict_logits(loaded, images), loaded.temperature)
    y = np.array([labels.index(s.label) for s in splits.val])
    assert row["threshold"] is None
    assert row["pooled"]["correct"] == (probs.argmax(1) == y).astype(int).tolist()
    assert row["pooled"]["auc"] == pytest.approx(M.roc_auc(y, probs)["auc"])
    assert row["pooled"]["counts"] == {"NORMAL": int((y == 0).sum()), "PNEUMONIA": int((y == 1).sum()), "COVID-19": 0}
