"""xray.training.thresholds: one threshold per population, chosen on validation with the shipped rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.generated_data import children_and_adults
from xray.training import metrics as M
from xray.training import thresholds as T
from xray.training.data import make_splits


def _synthetic_validation() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Children separated around 0.8, adults around 0.2: no single threshold serves both."""
    rng = np.random.default_rng(0)
    children_y = np.array([0] * 100 + [1] * 200)
    children_p = np.where(children_y == 1, rng.uniform(0.75, 1.0, 300), rng.uniform(0.0, 0.85, 300))
    adults_y = np.array([0] * 60 + [1] * 40)
    adults_p = np.where(adults_y == 1, rng.uniform(0.15, 0.9, 100), rng.uniform(0.0, 0.3, 100))
    y = np.concatenate([children_y, adults_y])
    p = np.concatenate([children_p, adults_p])
    sources = ["kermany-224"] * 300 + ["rsna"] * 30 + ["nih"] * 70
    return y, p, sources


def _recorded(splits) -> dict[str, dict[str, int]]:
    """Per-source counts of train and val, as metrics.json records them (`data.data_sources`)."""
    from collections import Counter

    return {split: dict(Counter(s.data_source for s in getattr(splits, split))) for split in ("train", "val")}


def _sens_spec(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    return float((p[y == 1] >= t).mean()), float((p[y == 0] < t).mean())


def test_each_population_gets_the_rule_on_its_own_validation_images():
    y, p, sources = _synthetic_validation()
    chosen = T.select_population_thresholds(y, p, sources, min_sensitivity=0.95)
    assert set(chosen) == {"children", "adults"}
    assert chosen["children"]["n"] == 300 and chosen["children"]["sources"] == ["kermany-224"]
    assert chosen["adults"]["n"] == 100 and chosen["adults"]["sources"] == ["nih", "rsna"]
    is_child = np.array([s == "kermany-224" for s in sources])
    for name, mask in (("children", is_child), ("adults", ~is_child)):
        t = chosen[name]["threshold"]
        sens, spec = _sens_spec(y[mask], p[mask], t)
        # the rule: sensitivity reaches the target on that population's validation images ...
        assert sens >= 0.95 and sens == pytest.approx(chosen[name]["sensitivity"])
        assert spec == pytest.approx(chosen[name]["specificity"])
        # ... and no threshold that also reaches it has a higher specificity there
        for other in np.unique(p[mask]):
            other_sens, other_spec = _sens_spec(y[mask], p[mask], other)
            if other_sens >= 0.95:
                assert other_spec <= spec + 1e-12
    assert chosen["adults"]["threshold"] < 0.3 < 0.7 < chosen["children"]["threshold"]
    assert chosen["children"]["rule"] == "highest specificity with validation sensitivity >= 0.95"


def test_source_table_compares_pooled_and_population_thresholds_per_source():
    y, p, sources = _synthetic_validation()
    table = T.source_table(y, p, sources, 0.5, {"children": 0.8, "adults": 0.1})
    assert list(table) == ["kermany-224", "rsna", "nih"]
    rsna = table["rsna"]
    assert rsna["population"] == "adults" and rsna["pooled"]["n"] == 30
    assert rsna["pooled"]["threshold"] == 0.5 and rsna["population_threshold"]["threshold"] == 0.1
    mask = np.array(sources) == "kermany-224"
    sens, spec = _sens_spec(y[mask], p[mask], 0.8)
    row = table["kermany-224"]["population_threshold"]
    assert (row["sensitivity"], row["specificity"]) == pytest.approx((sens, spec))
    assert row["tp"] + row["fn"] == 200 and row["tn"] + row["fp"] == 100
    assert T.rates(np.array([0, 0]), np.array([0.2, 0.9]), 0.5)["sensitivity"] is None  # no positives: undefined


def test_training_time_sources_leave_out_images_added_later_and_the_splits_match(tmp_path: Path):
    """A folder that gained a source and NIH files after training rebuilds the recorded validation split."""
    from PIL import Image

    root = tmp_path / "adult-cxr"
    rows = ["path,label,source,patient_id,split"]
    names = [("rsna_Normal-{}.jpg", "NORMAL", "rsna"), ("nih_nihzech_{}.png", "PNEUMONIA", "nih"),
             ("nih_{}.png", "PNEUMONIA", "nih"), ("cxnet_{}.jpg", "COVID-19", "cxnet")]  # fmt: skip
    for pattern, label, source in names:
        for i in range(20):
            path = Path("train") / label / pattern.format(i)
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), i).save(root / path)
            rows.append(f"{path.as_posix()},{label},{source},{source}-{i},train")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    from xray.training.data import load_samples

    old = [s for s in load_samples(root) if s.data_source in {"rsna", "nih"} and "nihzech" in str(s.source)
           or s.data_source == "rsna"]  # fmt: skip
    recorded_splits = make_splits([old], label_names=["NORMAL", "PNEUMONIA", "COVID-19"], seed=0)
    recorded = _recorded(recorded_splits)
    metrics = {"data": {"sources": [str(root)], "data_sources": recorded}, "training": {"seed": 0}}
    splits, left_out = T.rebuild_splits(metrics, ["NORMAL", "PNEUMONIA", "COVID-19"], None)
    assert left_out == 40  # cxnet and the later NIH files
    assert sorted(str(s.source) for s in splits.val) == sorted(str(s.source) for s in recorded_splits.val)
    assert not any("cxnet" in str(s.source) or Path(str(s.source)).name.startswith("nih_1") for s in splits.val)
    # a model trained on the data as they are now (NIH files added later included) gets its own split back
    new_splits = make_splits(
        [[s for s in load_samples(root) if s.data_source in {"rsna", "nih"}]],
        label_names=["NORMAL", "PNEUMONIA", "COVID-19"], seed=0,
    )  # fmt: skip
    new_metrics = {"data": {"sources": [str(root)], "data_sources": _recorded(new_splits)}, "training": {"seed": 0}}
    splits, left_out = T.rebuild_splits(new_metrics, ["NORMAL", "PNEUMONIA", "COVID-19"], None)
    assert left_out == 20  # only cxnet, a source it never had
    assert sorted(str(s.source) for s in splits.val) == sorted(str(s.source) for s in new_splits.val)
    assert any(Path(str(s.source)).name.startswith("nih_") and "nihzech" not in str(s.source) for s in splits.train)
    metrics["data"]["data_sources"]["val"] = {"rsna": 1}
    with pytest.raises(Exception, match="differs from the recorded one"):
        T.rebuild_splits(metrics, ["NORMAL", "PNEUMONIA", "COVID-19"], None)


def test_cli_writes_thresholds_chosen_on_validation_keeping_the_pooled_one(tiny_model_dir: Path, tmp_path: Path):
    """`python -m xray thresholds --write` on a tiny model trained on generated children and adults."""

    from xray.__main__ import main
    from xray.inference.models import update_config

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    sources = children_and_adults(data, rng, adult_source="rsna", per_class=24, size=40)
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    from xray.training.data import load_samples

    splits = make_splits([load_samples(s) for s in sources], label_names=["NORMAL", "PNEUMONIA"], seed=0)
    recorded = _recorded(splits)
    metrics = {"data": {"sources": sources, "data_sources": recorded}, "training": {"seed": 0, "min_sensitivity": 0.95}}
    (model / "metrics.json").write_text(json.dumps(metrics))
    update_config(model, threshold=0.5, positive_label="PNEUMONIA")
    assert main(["thresholds", "--model", f"local-dir:{model}", "--write"]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["threshold"] == 0.5  # the pooled fallback stays
    entry = config["thresholds"]
    assert entry["rule"] == "highest specificity with validation sensitivity >= 0.95, per population"
    assert "validation" in entry["chosen_on"] and "kermany-224" in entry["chosen_on"]
    # the stored thresholds are the rule's on the rebuilt validation split, scored by the real model
    from xray.inference.models import load_model_dir

    loaded = load_model_dir(model)
    p = T.score(loaded, splits.val)
    y = np.array([s.label == "PNEUMONIA" for s in splits.val], dtype=int)
    expected = T.select_population_thresholds(y, p, [s.data_source for s in splits.val])
    assert entry["children"] == pytest.approx(expected["children"]["threshold"])
    assert entry["adults"] == pytest.approx(expected["adults"]["threshold"])
    table = json.loads((model / "metrics.json").read_text())["population_thresholds"]
    assert set(table["validation"]["sources"]) == {"kermany-224", "rsna"} and "test" not in table
    # each population's validation ROC is stored for the app's operating panel
    mask = np.array([s.data_source == "kermany-224" for s in splits.val])
    assert table["populations"]["children"]["roc"] == M.roc_points(y[mask], p[mask])
    section = "\n".join(T.render_card_section(json.loads((model / "metrics.json").read_text()), level=3))
    assert section.startswith("### Per-population thresholds (children, adults)")
    assert f"children {entry['children']:.3f}, adults {entry['adults']:.3f}" in section
    assert "| kermany-224 | children" in section and "| rsna | adults" in section and "Test, read once" not in section
    assert T.render_card_section({}) == []  # a model without them: no section
    # --keep-pooled adults: the adults' own threshold is printed and recorded, the pooled one is stored
    assert main(["thresholds", "--model", f"local-dir:{model}", "--write", "--keep-pooled", "adults"]) == 0
    kept = json.loads((model / "config.json").read_text())["thresholds"]
    assert kept["adults"] == 0.5 and kept["kept_pooled"] == ["adults"]
    assert kept["children"] == pytest.approx(expected["children"]["threshold"])
    recorded = json.loads((model / "metrics.json").read_text())["population_thresholds"]["populations"]["adults"]
    assert recorded["own_threshold"] == pytest.approx(expected["adults"]["threshold"]) and recorded["kept_pooled"]
    # a rerun without the flag would store the adults' own threshold, rejected before: refused, nothing written
    before = (model / "config.json").read_text()
    assert main(["thresholds", "--model", f"local-dir:{model}", "--write"]) == 2
    assert (model / "config.json").read_text() == before
    with pytest.raises(T.DatasetError, match=r"keeps the pooled threshold for adults .*--keep-pooled adults.*"
                                             r"--replace-kept to replace it on purpose\. Nothing was written"):
        T._refuse_silent_replacement(json.loads(before), [], {"children": 0.7, "adults": 0.2}, replace=False)
    # --min-specificity: the written-in-advance fallback; a population below the floor keeps the pooled threshold
    # (--replace-kept: each step lets go of the population the previous one kept)
    floor = (expected["children"]["specificity"] + 1e-9, 0.0)
    for value, keeps in ((floor[0], ["children"]), (floor[1], [])):
        assert main(["thresholds", "--model", f"local-dir:{model}", "--write", "--min-specificity", str(value),
                     "--replace-kept"]) == 0  # fmt: skip
        stored = json.loads((model / "config.json").read_text())["thresholds"]
        assert stored.get("kept_pooled", []) == keeps
        assert stored["children"] == (0.5 if keeps else pytest.approx(expected["children"]["threshold"]))


def test_bundled_pneumonia_keeps_the_pooled_threshold_for_adults_and_says_why():
    import json

    from xray.config import PROJECT_ROOT
    from xray.training.thresholds import render_card_section

    folder = PROJECT_ROOT / "models" / "pneumonia"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert config["thresholds"]["adults"] == config["threshold"] and config["thresholds"]["kept_pooled"] == ["adults"]
    adults = metrics["population_thresholds"]["populations"]["adults"]
    assert adults["kept_pooled"] and adults["threshold"] == config["threshold"] and adults["own_threshold"] < 0.5
    assert config["thresholds"]["children"] == metrics["population_thresholds"]["populations"]["children"]["threshold"]
    card = "\n".join(render_card_section(metrics))
    assert "Adults keep the pooled threshold: the rule's own adults threshold, " in card
    assert card in (folder / "README.md").read_text(encoding="utf-8")  # the shipped card is the rendered one
