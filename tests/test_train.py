"""train.py end to end on a few real chest X-rays, with the real saving, loading and evaluation code."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from xray.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))
import train  # noqa: E402


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "pneu"
    train.main(
        [
            "--data",
            str(shared_data / "kermany-224"),
            "--arch",
            "mobilenetv3_small_100",
            "--init",
            "scratch",
            "--epochs",
            "1",
            "--max-per-class",
            "6",
            "--batch-size",
            "4",
            "--bootstrap",
            "20",
            "--threads",
            "2",
            "--out",
            str(out),
        ]
    )
    return out


def test_one_epoch_run_writes_a_loadable_evaluated_model(trained):
    from xray.inference.models import load_model

    loaded = load_model(f"local-dir:{trained}")
    assert loaded.architecture == "mobilenetv3_small_100"
    assert loaded.label_names == ["NORMAL", "PNEUMONIA"]
    assert loaded.positive_label == "PNEUMONIA"
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["counts"] == {"NORMAL": 6, "PNEUMONIA": 6}
    # temperature and threshold were fitted on validation, stored, and are what the loader applies
    assert loaded.temperature == pytest.approx(metrics["validation"]["temperature"])
    assert loaded.threshold == pytest.approx(metrics["validation"]["threshold"]["threshold"])
    assert metrics["training"]["epochs_run"] == 1 and len(metrics["history"]) == 1
    assert metrics["data"]["split_counts"]["val"]["NORMAL"] == 6
    for name in ("roc.png", "reliability.png", "confusion.png", "curves.png", "model.safetensors", "checkpoint.pt"):
        assert (trained / name).is_file(), name
    card = (trained / "README.md").read_text()
    assert "not a diagnostic device" in card and "children aged 1-5" in card
    assert "mobilenetv3_small_100" in card
    # The input gate's OOD statistics are fitted on this model's own train/val features.
    from xray.trust.gate import load_ood

    stats = load_ood(trained)
    assert stats is not None and stats.threshold > 0


def test_evaluate_command_scores_the_trained_folder(trained, shared_data, capsys):
    from xray.__main__ import main

    csv_path = trained.parent / "few.csv"
    images = sorted((shared_data / "kermany-val-fullres").rglob("*.jpeg"))
    csv_path.write_text("".join(f"{p},{p.parent.name}\n" for p in images[:2] + images[-2:]))
    assert (
        main(
            [
                "evaluate",
                "--model",
                f"local-dir:{trained}",
                "--data",
                str(csv_path),
                "--split",
                "all",
                "--bootstrap",
                "0",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["test"]["n"] == 4
    assert 0.0 <= result["test"]["at_default"]["value"]["accuracy"] <= 1.0


def test_resume_continues_from_the_checkpoint(trained, shared_data):
    ckpt = torch.load(trained / train.CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["finished"]
    out = trained.parent / "resumed"
    out.mkdir()
    # an unfinished one-epoch checkpoint, continued to two epochs
    ckpt["state"]["finished"] = False
    ckpt["state"]["total_steps"] = 4
    torch.save(ckpt, out / train.CHECKPOINT_NAME)
    train.main(
        [
            "--data",
            str(shared_data / "kermany-224"),
            "--arch",
            "mobilenetv3_small_100",
            "--init",
            "scratch",
            "--epochs",
            "2",
            "--max-per-class",
            "4",
            "--batch-size",
            "4",
            "--bootstrap",
            "0",
            "--resume",
            "--out",
            str(out),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["training"]["epochs_run"] == 2


def test_export_in_fp16_keeps_probabilities(trained, tmp_path, kermany_fullres):
    from xray.inference.models import load_model_dir
    from xray.training.data import load_pixels, load_samples

    images = load_pixels(load_samples(kermany_fullres[0].parent.parent), (224, 224), "bicubic")
    metrics = train.export_model(trained, tmp_path / "shipped", half=True, images=images)
    assert metrics["fp16"]["images_checked"] == 16
    assert metrics["fp16"]["max_abs_probability_diff"] < 1e-3
    shipped = tmp_path / "shipped"
    assert not (shipped / train.CHECKPOINT_NAME).exists()
    assert (shipped / "model.safetensors").stat().st_size < 0.6 * (trained / "model.safetensors").stat().st_size
    loaded = load_model_dir(shipped)
    assert loaded.label_names == ["NORMAL", "PNEUMONIA"]
    assert loaded.threshold == pytest.approx(load_model_dir(trained).threshold)
    assert "fp16" in (shipped / "README.md").read_text()


def test_reevaluate_a_run_with_an_input_jpeg_step(trained, tmp_path):
    from xray.inference.models import load_model_dir
    from xray.trust.gate import load_ood

    before = (trained / "metrics.json").read_text()
    out = tmp_path / "jpeg75"
    train.main(["--reevaluate", str(trained), "--input-jpeg-quality", "75", "--bootstrap", "20", "--threads", "2",
                "--out", str(out)])  # fmt: skip
    old, new = json.loads(before), json.loads((out / "metrics.json").read_text())
    # same patients (the run's own split settings), same training facts and history, the step recorded
    assert new["test"]["counts"] == old["test"]["counts"] and new["data"]["split_counts"] == old["data"]["split_counts"]
    assert new["history"] == old["history"] and new["training"]["epochs_run"] == old["training"]["epochs_run"]
    assert new["training"]["reevaluated_from"] == str(trained) and new["training"]["input_jpeg_quality"] == 75
    loaded = load_model_dir(out)
    assert loaded.config["input_jpeg_quality"] == 75
    assert loaded.temperature == pytest.approx(new["validation"]["temperature"])  # refitted with the step
    refitted = load_ood(out)
    assert refitted.n_val == old["data"]["split_counts"]["val"]["NORMAL"] * 2
    assert not refitted.view and load_ood(trained).view  # the transform's JPEG copy replaces the gate's own copy
    assert "input_jpeg_quality" not in load_model_dir(trained).config  # the run itself is untouched
    assert (trained / "metrics.json").read_text() == before
    with pytest.raises(SystemExit, match="integer from 1 to 95"):
        train.main(["--reevaluate", str(trained), "--input-jpeg-quality", "120", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_learning_rate_schedule():
    assert train.lr_at(0, 100, 1e-3, 10, "cosine") == pytest.approx(1e-4)
    assert train.lr_at(9, 100, 1e-3, 10, "cosine") == pytest.approx(1e-3)
    assert train.lr_at(55, 100, 1e-3, 10, "cosine") == pytest.approx(5e-4)
    assert train.lr_at(100, 100, 1e-3, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    peak = train.lr_at(30, 100, 1e-3, 0, "onecycle")
    assert peak == pytest.approx(1e-3) and train.lr_at(0, 100, 1e-3, 0, "onecycle") < peak / 10


def test_freeze_early_stops_gradients_before_the_cut():
    import timm

    model = timm.create_model("mobilenetv3_small_100", num_classes=2)
    frozen = train.freeze_early(model, 2)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert frozen > 0
    # mobilenetv3_small stages by stride are blocks.0, blocks.1, blocks.3, blocks.5: two stages = up to blocks.2
    assert not any(name.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2.")) for name in trainable)
    assert any(name.startswith("blocks.3.") for name in trainable) and "classifier.weight" in trainable
    resnet = timm.create_model("resnet18", num_classes=2)
    train.freeze_early(resnet, 2)
    trainable = [name for name, p in resnet.named_parameters() if p.requires_grad]
    assert trainable[0].startswith("layer3.") and "fc.weight" in trainable


def test_class_weights_balance_the_loss():
    weights = train.class_weights(np.array([0, 1, 1, 1]), 2).numpy()
    # 1 NORMAL and 3 PNEUMONIA: each class contributes equally (1 * w0 == 3 * w1)
    assert weights[0] == pytest.approx(3 * weights[1])


def test_fine_tune_our_checkpoint_into_three_classes(trained, shared_data):
    from xray.inference.models import load_model_dir

    out = trained.parent / "three"
    train.main([
        "--data", str(shared_data / "kermany-224"), "--data", str(shared_data / "covid-chestxray"),
        "--labels", "NORMAL,PNEUMONIA,COVID-19", "--init", f"local-dir:{trained}", "--epochs", "1",
        "--max-per-class", "3", "--batch-size", "3", "--bootstrap", "0", "--out", str(out),
    ])  # fmt: skip
    loaded = load_model_dir(out)
    assert loaded.label_names == ["NORMAL", "PNEUMONIA", "COVID-19"]
    assert loaded.architecture == "mobilenetv3_small_100" and loaded.threshold is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["counts"] == {"NORMAL": 3, "PNEUMONIA": 3, "COVID-19": 3}
    assert set(metrics["test"]["roc"]) == {"NORMAL", "PNEUMONIA", "COVID-19"}
    # the backbone started from our checkpoint, not from scratch: early weights are still close to it
    before = load_model_dir(trained).model.state_dict()["conv_stem.weight"]
    after = loaded.model.state_dict()["conv_stem.weight"]
    assert (after - before).abs().max() < 0.05


def test_model_card_includes_the_gate_figures_once_measured(trained, tmp_path):
    import shutil

    from tests.test_card import GATE
    from xray.training import card
    folder = tmp_path / "model"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoint.pt"))
    assert card.read_gate(folder) is None
    first = card.write_model_card(folder).read_text()
    assert "## Input gate" not in first
    # the default intensity augmentation is recorded and described
    assert json.loads((folder / "metrics.json").read_text())["training"]["intensity"] == 0.1
    assert "brightness/contrast +-0.1" in first
    (folder / card.GATE_FILE).write_text(json.dumps(GATE))
    readme = card.write_model_card(folder).read_text()
    assert readme.index("## Input gate") < readme.index("## Limitations")
    assert "| Kermany official test (in scope) | 624 | 9 | 1.4% | flag < 2% | yes" in readme


@pytest.fixture(scope="module")
def mixed_run(shared_data, tmp_path_factory):
    """A one-epoch two-class run on kermany-224 + adult-cxr, COVID-19 mapped to PNEUMONIA, square-root sampling."""
    out = tmp_path_factory.mktemp("mixed") / "pneu-adult"
    train.main([
        "--data", str(shared_data / "kermany-224"), "--data", str(shared_data / "adult-cxr"),
        "--label-map", "COVID-19=PNEUMONIA", "--source-balance", "0.5", "--arch", "mobilenetv3_small_100",
        "--init", "scratch", "--epochs", "1", "--max-per-class", "5", "--batch-size", "5", "--bootstrap", "20",
        "--threads", "2", "--out", str(out),
    ])  # fmt: skip
    return out


def test_training_writes_the_per_source_table_and_probe(mixed_run):
    metrics = json.loads((mixed_run / "metrics.json").read_text())
    data, table, probe = metrics["data"], metrics["per_source"], metrics["shortcut_probe"]
    assert metrics["label_names"] == ["NORMAL", "PNEUMONIA"] and data["label_map"] == "COVID-19=PNEUMONIA"
    assert data["sampling"].startswith("each data source drawn in proportion to its size**0.5")
    # one row per data source of the test split, with the counts the data facts give, at the chosen threshold
    assert {name: row["n"] for name, row in table["sources"].items()} == data["data_sources"]["test"]
    assert set(table["sources"]) <= {"kermany-224", "rsna", "nih", "radiography"}
    assert table["pooled"]["n"] == metrics["test"]["n"] == 10 and table["threshold"] == metrics["threshold"]
    assert table["pooled"]["counts"] == metrics["test"]["counts"] == {"NORMAL": 5, "PNEUMONIA": 5}
    for name, by_true in probe["sources"].items():
        assert sum(row["n"] for row in by_true.values()) == table["sources"][name]["n"]
        assert all(sum(row["predicted"].values()) == row["n"] for row in by_true.values())
    readme = (mixed_run / "README.md").read_text()
    assert "## Results per data source (test set)" in readme and "### Shortcut probe" in readme
    assert "- Sampling during training: each data source drawn in proportion to its size**0.5" in readme
    assert "- Label map: `COVID-19=PNEUMONIA`" in readme and "adult-cxr: adult frontal chest X-rays" in readme


def test_reevaluate_rebuilds_the_runs_splits_and_label_map(mixed_run, tmp_path):
    from xray.inference.models import load_model_dir

    old = json.loads((mixed_run / "metrics.json").read_text())
    out = tmp_path / "again"
    # no --input-jpeg-quality: the run's own input processing is kept; no --data: the run's own data
    train.main(["--reevaluate", str(mixed_run), "--bootstrap", "20", "--threads", "2", "--out", str(out)])
    new = json.loads((out / "metrics.json").read_text())
    assert new["data"]["split_counts"] == old["data"]["split_counts"]
    assert new["data"]["data_sources"] == old["data"]["data_sources"]
    assert new["data"]["label_map"] == "COVID-19=PNEUMONIA" and new["data"]["sampling"] == old["data"]["sampling"]
    # same model, same images: the same decisions per source
    assert list(new["per_source"]["sources"]) == list(old["per_source"]["sources"])
    for name, row in new["per_source"]["sources"].items():
        assert row["confusion"] == old["per_source"]["sources"][name]["confusion"], name
        assert row["value"]["accuracy"] == pytest.approx(old["per_source"]["sources"][name]["value"]["accuracy"])
    assert new["shortcut_probe"] == old["shortcut_probe"]
    assert new["training"]["reevaluated_from"] == str(mixed_run) and new["training"]["input_jpeg_quality"] is None
    assert "input_jpeg_quality" not in load_model_dir(out).config


def test_reevaluate_adds_the_per_source_table_to_an_older_run(trained, tmp_path):
    import shutil

    old = json.loads((trained / "metrics.json").read_text())
    for key in ("per_source", "shortcut_probe", "sampling", "data_sources", "label_map"):
        old.pop(key, None)
        old["data"].pop(key, None)
    old["training"].pop("label_map", None)
    older = tmp_path / "older"
    shutil.copytree(trained, older, ignore=shutil.ignore_patterns("checkpoint.pt"))
    (older / "metrics.json").write_text(json.dumps(old))
    train.export_model(older, tmp_path / "card", half=False, images=[])  # an older metrics.json still renders
    assert "## Results per data source" not in (tmp_path / "card" / "README.md").read_text()
    train.main(["--reevaluate", str(older), "--bootstrap", "0", "--threads", "2", "--out", str(tmp_path / "new")])
    new = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert list(new["per_source"]["sources"]) == ["kermany-224"]
    assert new["per_source"]["sources"]["kermany-224"]["counts"] == old["test"]["counts"]
    assert "## Results per data source" in (tmp_path / "new" / "README.md").read_text()
