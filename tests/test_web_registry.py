"""xray.web.registry: the registered models, their headline metrics, cards and examples."""

from __future__ import annotations

from xray.web import registry


def test_headline_metrics_read_the_evaluate_layout():
    metrics = {
        "test": {
            "at_default": {"value": {"auc": 0.9, "accuracy": 0.8}},
            "at_threshold": {"value": {"auc": 0.97, "accuracy": 0.91, "sensitivity": 0.95, "specificity": 0.88}},
        }
    }
    assert registry.headline_metrics(metrics) == {
        "auc": 0.97,
        "accuracy": 0.91,
        "sensitivity": 0.95,
        "specificity": 0.88,
    }
    assert (
        registry.format_headline(registry.headline_metrics(metrics)) == "AUC 0.970, acc 0.910, sens 0.950, spec 0.880"
    )
    assert registry.headline_metrics({"test": {"at_default": {"value": {"auc": None, "accuracy": 0.8}}}}) == {
        "accuracy": 0.8
    }
    assert registry.headline_metrics({}) == {}


def test_model_card_front_matter_is_removed():
    assert registry.strip_front_matter("---\nlicense: mit\n---\n\n# Card\ntext") == "# Card\ntext"
    assert registry.strip_front_matter("# Card") == "# Card"


def test_describe_model_reads_config_without_loading(tiny_model_dir, tmp_path):
    info = registry.describe_model(f"local-dir:{tiny_model_dir}")
    assert info.error is None and info.architecture == "mobilenetv3_small_100"
    assert info.label_names == ["NORMAL", "PNEUMONIA"]
    assert "no test metrics" in info.choice_label
    missing = registry.describe_model(f"local-dir:{tmp_path}")
    assert missing.error and "config.json" in missing.error and "(unavailable)" in missing.choice_label


def test_registered_models_put_the_default_first(tmp_path, tiny_model_dir):
    import shutil

    from xray.config import Settings

    models = tmp_path / "models"
    for name in ("covid", "pneumonia"):
        shutil.copytree(tiny_model_dir, models / name)
    settings = Settings(models_dir=models, default_model="pneumonia", extra_models="local-dir:/x, covid")
    assert registry.registered_models(settings) == ["pneumonia", "covid", "local-dir:/x"]
    assert registry.registered_models(Settings(models_dir=tmp_path / "none", extra_models="")) == []
    # a Space that loads its default from the hub offers it without listing it again in XRAY_EXTRA_MODELS
    hub = Settings(models_dir=models, default_model="hf-hub:org/pneu", extra_models="")
    assert registry.registered_models(hub) == ["hf-hub:org/pneu", "covid", "pneumonia"]


def test_example_files_are_the_four_samples():
    names = [p.name for p in registry.example_files()]
    assert len(names) == 4 and sum(n.startswith("NORMAL") for n in names) == 2
