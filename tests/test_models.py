import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from tests.conftest import REPO_ROOT
from tests.hub_cache import populate_hf_cache
from xray.errors import ModelConfigError, ModelNotFoundError
from xray.inference.models import load_model, load_model_dir, resolve_model_dir, save_model, update_config
from xray.inference.predict import predict


def test_local_dir_round_trip_keeps_labels_config_and_outputs(tiny_model_dir: Path):
    loaded = load_model(f"local-dir:{tiny_model_dir}")
    assert loaded.label_names == ["NORMAL", "PNEUMONIA"]
    assert loaded.architecture == "mobilenetv3_small_100"
    assert tuple(loaded.data_config["input_size"]) == (3, 224, 224)
    assert loaded.threshold == 0.5 and loaded.positive_label == "PNEUMONIA" and loaded.temperature == 1.0
    # The reloaded network computes exactly what a freshly built timm model with the saved weights computes.
    ref = timm.create_model("mobilenetv3_small_100", num_classes=2)
    from safetensors.torch import load_file

    ref.load_state_dict(load_file(str(tiny_model_dir / "model.safetensors")))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(ref.eval()(x), loaded.model(x), atol=1e-5)


def test_load_model_is_cached_per_process(tiny_model_dir: Path):
    assert load_model(f"local-dir:{tiny_model_dir}") is load_model(f"local-dir:{tiny_model_dir}")


def test_config_values_are_applied(tmp_path: Path):
    model = timm.create_model("resnet18", num_classes=2)
    out = save_model(model, tmp_path / "m", label_names=["NORMAL", "PNEUMONIA"])
    update_config(out, temperature=2.0, threshold=0.3)
    loaded = load_model_dir(out)
    assert (loaded.temperature, loaded.threshold) == (2.0, 0.3)
    assert json.loads((out / "config.json").read_text())["label_names"] == ["NORMAL", "PNEUMONIA"]


def test_fp16_storage_halves_size_and_keeps_probabilities(tmp_path: Path):
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=3)
    full = save_model(model, tmp_path / "fp32", label_names=["A", "B", "C"])
    half = save_model(model, tmp_path / "fp16", label_names=["A", "B", "C"], half=True)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast
    size32, size16 = (full / "model.safetensors").stat().st_size, (half / "model.safetensors").stat().st_size
    assert size16 < 0.55 * size32
    image = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    a = predict(load_model_dir(full), [image])[0].probabilities
    b = predict(load_model_dir(half), [image])[0].probabilities
    assert max(abs(a[k] - b[k]) for k in a) < 1e-3


@pytest.mark.parametrize("arch", ["mobilenetv3_large_100", "resnet50", "densenet121", "efficientnet_lite0"])
def test_supported_architectures_save_and_load(tmp_path: Path, arch: str):
    out = save_model(timm.create_model(arch, num_classes=2), tmp_path / arch, label_names=["NORMAL", "PNEUMONIA"])
    loaded = load_model_dir(out)
    assert loaded.architecture == arch
    assert predict(loaded, [np.zeros((100, 120), np.uint8)])[0].label in {"NORMAL", "PNEUMONIA"}


def test_unknown_short_name_lists_what_is_accepted():
    with pytest.raises(ModelNotFoundError, match=r"Unknown model 'nope'.*hf-hub:org/repo.*local-dir:PATH"):
        resolve_model_dir("nope")


def test_local_dir_without_config_says_what_is_needed(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match=r"has no config.json.*label_names"):
        resolve_model_dir(f"local-dir:{tmp_path}")


def test_config_without_label_names_is_rejected(tmp_path: Path):
    out = save_model(timm.create_model("resnet18", num_classes=2), tmp_path / "m", label_names=["A", "B"])
    config = json.loads((out / "config.json").read_text())
    del config["label_names"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelConfigError, match="lacks 'label_names'"):
        load_model_dir(out)


def test_weights_of_another_architecture_are_rejected(tmp_path: Path):
    out = save_model(timm.create_model("resnet18", num_classes=2), tmp_path / "m", label_names=["A", "B"])
    update_config(out, architecture="resnet34")
    with pytest.raises(ModelConfigError, match="does not match architecture 'resnet34'"):
        load_model_dir(out)


def _run_cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "xray", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_hf_hub_model_loads_offline_from_the_local_cache(tiny_model_dir: Path, tmp_path: Path, kermany_fullres):
    commit = populate_hf_cache(tmp_path / "hub", "xray-demo/tiny-pneumonia", tiny_model_dir)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    for name in ("hf-hub:xray-demo/tiny-pneumonia", f"hf-hub:xray-demo/tiny-pneumonia@{commit}"):
        done = _run_cli(["predict", str(kermany_fullres[0]), "--model", name, "--json"], env)
        assert done.returncode == 0, done.stderr
        [row] = json.loads(done.stdout)
        assert row["model"] == name
        assert set(row["probabilities"]) == {"NORMAL", "PNEUMONIA"}
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5


def test_hf_hub_model_missing_offline_names_repo_and_remedy(tmp_path: Path, kermany_fullres):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    done = _run_cli(["predict", str(kermany_fullres[0]), "--model", "hf-hub:xray-demo/absent"], env)
    assert done.returncode != 0
    assert "hf-hub:xray-demo/absent" in done.stderr
    assert "huggingface-cli download xray-demo/absent" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["pneumonia", "covid"])
def test_bundled_models_load_within_the_size_limit_and_read_the_examples(name: str):
    # The shipped defaults, through the same loading path as the app: labels, calibration and the input gate's
    # statistics travel in the folder, which stays under the 25 MB the project allows per bundled model.
    from xray.imaging.io import read_image
    from xray.trust.gate import ood_stats_for, view_check_for

    folder = REPO_ROOT / "models" / name
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 25_000_000
    loaded = load_model(name)
    assert loaded.path == folder and loaded.label_names[:2] == ["NORMAL", "PNEUMONIA"]
    assert loaded.temperature != 1.0 and ood_stats_for(loaded) is not None
    assert view_check_for(loaded) is not None  # lateral views and non-chest images are flagged by a learned check
    assert loaded.config["input_jpeg_quality"] == 75  # uploads and 224-px training copies, processed alike
    assert {"test", "validation", "training"} <= set(loaded.metrics)
    if name == "pneumonia":
        assert 0 < loaded.threshold < 1 and loaded.positive_label == "PNEUMONIA"
    # the bundled examples come from Kermany's 16-image validation folder, which no model trained on
    examples = sorted((REPO_ROOT / "examples").glob("*.jpeg"))
    results = predict(loaded, [read_image(p) for p in examples])
    truth = ["NORMAL" if p.name.startswith("NORMAL") else "PNEUMONIA" for p in examples]
    assert sorted(truth) == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    # full-resolution uploads, read through the models' 224-px JPEG input step (docs/input-view.md: without it an
    # earlier three-class network called 10 of Kermany's 16 such children COVID-19)
    assert [r.label for r in results] == truth
    if name == "covid":
        # the source effect measured in model_card.md (shortcut probe) ships with every prediction
        assert loaded.caveat and "not a COVID-19 test" in loaded.caveat
        assert "where an image comes from" in loaded.caveat
        # its figures are the bundled metrics.json's: adult normals called COVID-19, over every adult source
        probe = loaded.metrics["shortcut_probe"]["sources"]
        rows = [rows["NORMAL"] for source, rows in probe.items() if source != "kermany-224" and "NORMAL" in rows]
        called, n = sum(r["predicted"]["COVID-19"] for r in rows), sum(r["n"] for r in rows)
        assert f"{called} of {n} normal X-rays ({100 * called / n:.0f}%) COVID-19" in loaded.caveat


def test_publish_dry_run_checks_the_folder_and_lists_the_files(tiny_model_dir: Path, tmp_path: Path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "run")
    (folder / "checkpoint.pt").write_bytes(b"optimizer state")  # never published
    (folder / "train.log").write_text("log")
    done = _run_cli(["publish", str(folder), "my-lab/tiny-pneumonia", "--dry-run"], {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "https://huggingface.co/my-lab/tiny-pneumonia (public)" in done.stdout
    assert "config.json" in done.stdout and "model.safetensors" in done.stdout
    assert "checkpoint.pt" not in done.stdout and "train.log" not in done.stdout
    assert "load it as hf-hub:my-lab/tiny-pneumonia" in done.stdout and "dry run: nothing uploaded" in done.stdout
    bad = _run_cli(["publish", str(folder), "no-slash", "--dry-run"], {})
    assert bad.returncode == 2 and "is not of the form org/name" in bad.stderr
    empty = _run_cli(["publish", str(tmp_path), "my-lab/x", "--dry-run"], {})
    assert empty.returncode == 2 and "config.json" in empty.stderr and "Traceback" not in empty.stderr


def test_publish_without_the_hub_says_what_to_do(tiny_model_dir: Path):
    done = _run_cli(["publish", str(tiny_model_dir), "my-lab/tiny-pneumonia"], {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Could not publish to https://huggingface.co/my-lab/tiny-pneumonia" in done.stderr
    assert "hf auth login" in done.stderr


def test_published_files_load_as_the_apps_default_model_offline(tiny_model_dir: Path, tmp_path: Path, kermany_fullres):
    """What `publish` uploads, placed in a real HF cache, is what the app loads at start with HF_HUB_OFFLINE=1."""
    from xray.inference.models import publish_plan

    plan = publish_plan(tiny_model_dir, "xray-demo/published")
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in plan.files:
        shutil.copyfile(tiny_model_dir / name, staged / name)
    populate_hf_cache(tmp_path / "hub", plan.repo_id, staged)
    script = (
        "import json, sys\n"
        "from sqlmodel import Session\n"
        "from xray.config import Settings\n"
        "from xray.records import auth\n"
        "from xray.web import diagnose, registry, startup\n"
        "settings = Settings()\n"  # XRAY_* from the environment, as app.main() reads them
        "models = registry.registered_models(settings)\n"
        "engine = startup.open_database(settings)\n"
        "with Session(engine) as s:\n"
        "    doctor = auth.add_doctor(s, username='alice', password='correct horse battery')\n"
        "    result = diagnose.diagnose(s, startup.image_store(settings), doctor=doctor, source=sys.argv[1],\n"
        "        filename=None, patient_name='P', exam_date='2025-01-02', model_name=models[0],\n"
        "        allowed_models=models,\n"
        "        max_upload_bytes=2**26, max_pixels=10**8)\n"
        "print(json.dumps({'models': models, 'record_model': result.record.model_name, 'label': result.label}))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "XRAY_DEFAULT_MODEL": plan.model_name, "XRAY_DATA_DIR": str(tmp_path / "data"), "XRAY_EXTRA_MODELS": ""}
    done = subprocess.run([sys.executable, "-c", script, str(kermany_fullres[0])], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["models"][0] == "hf-hub:xray-demo/published" and out["record_model"] == "hf-hub:xray-demo/published"
    assert out["label"] in {"NORMAL", "PNEUMONIA"}
