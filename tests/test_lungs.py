"""Lung-field estimate on real X-rays and the heatmap-in-lungs score on constructed heatmaps."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from xray.imaging.io import read_image
from xray.trust import lungs


@pytest.fixture(scope="module")
def fullres(kermany_fullres: list[Path]):
    return [read_image(p) for p in kermany_fullres]


@pytest.fixture(scope="module")
def fields(fullres):
    """The app's lung fields: the bundled segmentation model's (the test fails if the heuristic stood in)."""
    found = [lungs.lung_fields(image) for image in fullres]
    assert all(f.method == lungs.MODEL_METHOD and f.note is None for f in found)
    return found


@pytest.fixture(scope="module")
def heuristic_fields(fullres):
    return [lungs.heuristic_lung_fields(image) for image in fullres]


def _blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))).astype(np.float32)


@pytest.mark.parametrize("which", ["fields", "heuristic_fields"])
def test_masks_on_real_xrays_are_plausible(fullres, which, request) -> None:
    fields = request.getfixturevalue(which)
    areas = [f.area_fraction for f in fields]
    assert all(f.plausible for f in fields)
    assert 0.12 < np.mean(areas) < 0.35
    for image, f in zip(fullres, fields, strict=True):
        h, w = image.pixels.shape[:2]
        assert f.mask.shape == (h, w) and f.mask.dtype == bool
        # two lung fields, one either side of the midline, none in the outer corners or the bottom 5%
        assert f.mask[:, : w // 2].sum() > 0.03 * h * w and f.mask[:, w // 2 :].sum() > 0.03 * h * w
        assert not f.mask[int(0.95 * h) :].any()
        assert not f.mask[: h // 10, : w // 10].any() and not f.mask[: h // 10, -w // 10 :].any()
        # inside the thorax (the masks' bounding box) the lungs are darker than the rest: aerated lung vs
        # mediastinum, spine and diaphragm
        grey = image.pixels.mean(axis=2)
        rows, cols = np.flatnonzero(f.mask.any(axis=1)), np.flatnonzero(f.mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        assert grey[box][f.mask[box]].mean() < grey[box][~f.mask[box]].mean() - 10


def test_heat_in_a_corner_scores_near_zero_and_warns(fullres, fields) -> None:
    image, field = fullres[0], fields[0]
    h, w = field.mask.shape
    heat = _blob((h, w), (0.04 * w, 0.04 * h), 0.05 * w)
    check = lungs.assess_heatmap(heat, image, fields=field)
    assert check.heat_in_lungs < 0.05 and check.heat_in_chest < 0.05
    assert check.warning is not None and "mostly on areas outside it" in check.warning
    assert f"Only {check.heat_in_chest:.0%} of the heatmap lies over the chest" in check.warning


def test_heat_on_the_mediastinum_counts_for_the_chest_not_the_lungs(fullres, fields) -> None:
    image, field = fullres[0], fields[0]
    h, w = field.mask.shape
    rows = np.flatnonzero(field.mask.any(axis=1))
    between = np.flatnonzero(field.chest[(rows[0] + rows[-1]) // 2] & ~field.mask[(rows[0] + rows[-1]) // 2])
    centre = (float(between.mean()), float((rows[0] + rows[-1]) / 2))
    check = lungs.assess_heatmap(_blob((h, w), centre, 0.03 * w), image, fields=field)
    assert check.heat_in_lungs < 0.5 < check.heat_in_chest
    assert check.warning is None
    assert "over the lung fields" in check.summary and "over the chest" in check.summary


def test_heat_on_the_lungs_scores_high_without_warning(fullres, fields) -> None:
    for image, field in zip(fullres[:4], fields[:4], strict=True):
        h, w = field.mask.shape
        heat = np.zeros((h, w), np.float32)
        count, labels, _, centroids = cv2.connectedComponentsWithStats(field.mask.astype(np.uint8))
        for i in range(1, count):
            heat += _blob((h, w), tuple(centroids[i]), 0.05 * w)
        check = lungs.assess_heatmap(heat, image, fields=field)
        assert check.heat_in_lungs > 0.9 and check.heat_in_chest >= check.heat_in_lungs
        assert check.warning is None


def test_low_resolution_heatmap_is_resized(fullres, fields) -> None:
    """Grad-CAM maps may come at the model's 7 x 7 grid; the score resizes them to the image."""
    field = fields[1]
    coarse = np.zeros((7, 7), np.float32)
    coarse[0, 0] = 1.0
    share = lungs.heat_in_lungs(coarse, field.mask)
    assert share < 0.05


def test_heat_in_lungs_hand_computed() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    assert lungs.heat_in_lungs(np.ones((10, 10)), mask) == pytest.approx(0.5)
    heat = np.zeros((10, 10))
    heat[2, 2], heat[2, 7] = 3.0, 1.0
    assert lungs.heat_in_lungs(heat, mask) == pytest.approx(0.75)
    assert lungs.heat_in_lungs(np.zeros((10, 10)), mask) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        lungs.heat_in_lungs(np.ones((10, 10, 3)), mask)


@pytest.mark.parametrize("find", [lungs.lung_fields, lungs.heuristic_lung_fields], ids=["model", "heuristic"])
def test_no_lungs_on_a_blank_image_means_no_check(find) -> None:
    blank = np.full((300, 300, 3), 120, np.uint8)
    field = find(blank)
    assert not field.plausible and field.area_fraction == 0.0
    check = lungs.assess_heatmap(np.ones((300, 300), np.float32), blank, fields=field)
    assert check.heat_in_lungs is None and check.heat_in_chest is None
    assert "could not be outlined" in check.warning and "not checked" in check.summary


def test_accepts_grey_arrays_and_keeps_size(fullres) -> None:
    grey = fullres[2].pixels[..., 0]
    mask = lungs.lung_mask(grey)
    assert mask.shape == grey.shape
    assert np.array_equal(mask, lungs.lung_mask(fullres[2]))


def test_scoring_grid_keeps_the_full_resolution_shares(fullres, fields):
    """The check scores at SCORE_SIDE; shares stay within 0.02 of scoring the full-resolution mask."""
    assert max(fullres[0].pixels.shape[:2]) > lungs.SCORE_SIDE  # real full-size uploads
    for image, field in zip(fullres, fields, strict=True):
        h, w = image.pixels.shape[:2]
        heat = _blob((h, w), (int(0.35 * w), int(0.5 * h)), 0.15 * w) + 0.5 * _blob((h, w), (int(0.9 * w), 20), 0.1 * w)
        full = lungs.assess_heatmap(heat, image, fields=field)  # the full-resolution computation
        fast = lungs.assess_heatmap(heat, image)
        assert (full.heat_in_lungs is None) == (fast.heat_in_lungs is None)
        if full.heat_in_lungs is not None:
            assert abs(full.heat_in_lungs - fast.heat_in_lungs) <= 0.02
            assert abs(full.heat_in_chest - fast.heat_in_chest) <= 0.02
    assert lungs.score_shape(1416, 1776) == (408, 512) and lungs.score_shape(224, 224) == (224, 224)


def _fill_holes_reference(image: np.ndarray) -> np.ndarray:
    """Reconstruction by erosion in float, one convergence check per sweep (the textbook loop)."""
    marker = np.full_like(image, image.max())
    marker[0, :], marker[-1, :], marker[:, 0], marker[:, -1] = image[0, :], image[-1, :], image[:, 0], image[:, -1]
    while True:
        grown = np.maximum(cv2.erode(marker, np.ones((3, 3), np.uint8)), image)
        if np.array_equal(grown, marker):
            return marker
        marker = grown


def test_hole_filling_matches_the_float_reconstruction_on_real_xrays(fullres) -> None:
    for image in fullres[:4]:
        grey, _ = lungs._grey(image, lungs.WORK_SIZE)
        grey = cv2.GaussianBlur(grey, (0, 0), 2)
        lo, hi = np.percentile(grey, [1, 99])
        grey = np.clip((grey - lo) / (hi - lo), 0, 1).astype(np.float32)
        filled, reference = lungs._fill_holes(grey), _fill_holes_reference(grey)
        assert np.abs(filled - reference).max() <= 1e-4  # 16-bit levels: steps of 1.5e-5
        assert float((reference - grey).max()) > 0.1  # real basins were filled, not a flat no-op


def test_shares_from_the_preview_match_shrinking_the_full_image_directly(fullres) -> None:
    """The heuristic starts from the upload's 1024-px preview; before, the full image was shrunk to 256 px."""
    for image in fullres:
        h, w = image.pixels.shape[:2]
        shape = lungs.score_shape(h, w)
        direct = cv2.resize(image.pixels, (lungs.WORK_SIZE, lungs.WORK_SIZE), interpolation=cv2.INTER_AREA)
        before = lungs.heuristic_lung_fields(direct, shape=shape)
        after = lungs.heuristic_lung_fields(image, shape=shape)
        heat = _blob((h, w), (int(0.35 * w), int(0.5 * h)), 0.15 * w) + 0.5 * _blob((h, w), (int(0.9 * w), 20), 0.1 * w)
        old, new = lungs.assess_heatmap(heat, image, fields=before), lungs.assess_heatmap(heat, image, fields=after)
        assert (old.heat_in_lungs is None) == (new.heat_in_lungs is None)
        if old.heat_in_lungs is not None:
            assert abs(old.heat_in_lungs - new.heat_in_lungs) <= 0.02
            assert abs(old.heat_in_chest - new.heat_in_chest) <= 0.02


def test_chest_is_the_hull_of_every_lung_pixel(fields) -> None:
    for field in fields:
        points = cv2.findNonZero(field.mask.astype(np.uint8))
        expected = np.zeros(field.mask.shape, np.uint8)
        cv2.fillPoly(expected, [cv2.convexHull(points)], 1)
        assert np.array_equal(field.chest, expected.astype(bool))


# --- the lung segmentation model: loading, quality, fallback, command line -------------------------------------

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "lungs"


@pytest.fixture(scope="module")
def tiny_lung_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, freshly initialised small MONAI U-Net saved in the lung model layout."""
    import torch

    from xray.inference.segmentation import build_network, save_segmenter

    torch.manual_seed(0)
    network = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}
    return save_segmenter(build_network(network), tmp_path_factory.mktemp("lungs") / "tiny", network=network,
                          input_side=64)  # fmt: skip


@pytest.fixture(scope="module")
def validation_pairs(shared_data: Path):
    """Validation patients of the shipped model's split (never trained on): 4 adults and 2 children."""
    from xray.training.lungs import ADULT, CHILD, load_pairs, split_patients

    _, val = split_patients(load_pairs(shared_data / "lung-masks"), seed=0)
    return [p for p in val if p.age_group == ADULT][:4] + [p for p in val if p.age_group == CHILD][:2]


def test_saved_model_reloads_through_the_loading_path_with_the_same_outputs(tiny_lung_dir, fullres) -> None:
    import torch

    from xray.inference import segmentation
    from xray.inference.segmentation import build_network, load_segmenter

    loaded = load_segmenter(f"local-dir:{tiny_lung_dir}")
    assert loaded.input_side == 64 and loaded.threshold == 0.5 and loaded.config["task"] == segmentation.TASK
    assert load_segmenter(f"local-dir:{tiny_lung_dir}") is loaded  # cached: loaded once per process
    torch.manual_seed(0)
    fresh = build_network(loaded.config["network"]).eval()
    grey = fullres[0].pixels[..., 0]
    with torch.inference_mode():
        expected = fresh(torch.from_numpy(segmentation.prepare(grey, 64))[None, None])[0, 0].numpy()
    assert np.allclose(loaded.logits(grey), expected, atol=1e-4)
    fields = lungs.model_lung_fields(fullres[0], loaded, shape=(100, 80))
    assert fields.mask.shape == (100, 80) and fields.method == lungs.MODEL_METHOD


def test_onnx_runtime_and_torch_give_the_same_lung_fields(fullres) -> None:
    from xray.inference.segmentation import load_segmenter_dir
    from xray.training.lungs import dice

    fast = load_segmenter_dir(BUNDLED, accelerated=True)
    plain = load_segmenter_dir(BUNDLED, accelerated=False)
    for image in fullres[:3]:
        grey = image.pixels[..., 0]
        assert np.abs(fast.logits(grey) - plain.logits(grey)).max() < 1e-3
        assert dice(lungs.model_lung_fields(image, fast).mask, lungs.model_lung_fields(image, plain).mask) > 0.999
    assert fast._session is not None and plain._session is None


def test_a_classifier_folder_is_not_a_lung_model(tiny_model_dir, tiny_lung_dir) -> None:
    from xray.errors import ModelConfigError
    from xray.inference.segmentation import is_segmentation_dir, load_segmenter_dir

    assert is_segmentation_dir(tiny_lung_dir) and not is_segmentation_dir(tiny_model_dir)
    with pytest.raises(ModelConfigError, match="not a lung segmentation model"):
        load_segmenter_dir(tiny_model_dir)


def test_the_lung_model_is_not_offered_as_a_classifier(tmp_path: Path) -> None:
    from xray.config import Settings
    from xray.inference.models import list_bundled_models
    from xray.web.registry import registered_models

    assert (BUNDLED / "config.json").is_file() and (BUNDLED / "model.safetensors").is_file()
    settings = Settings(models_dir=BUNDLED.parent, extra_models="")
    assert "lungs" not in registered_models(settings) and "pneumonia" in registered_models(settings)
    assert "lungs" not in list_bundled_models() and "pneumonia" in list_bundled_models()


def test_bundled_model_is_small() -> None:
    assert sum(f.stat().st_size for f in BUNDLED.iterdir()) <= 10 * 2**20


def test_bundled_model_matches_hand_drawn_masks_on_validation_patients(validation_pairs) -> None:
    """Dice against the V7 masks on patients the model never saw (the split of xray.training.lungs)."""
    from xray.training.lungs import dice

    assert {p.age_group for p in validation_pairs} == {"adult", "child"}
    for pair in validation_pairs:
        rgb = np.repeat(pair.grey[..., None], 3, axis=2)
        found = lungs.lung_fields(rgb)
        assert found.method == lungs.MODEL_METHOD and found.mask.shape == pair.mask.shape
        assert dice(found.mask, pair.mask) >= 0.85, pair.name
    scores = [dice(lungs.lung_fields(np.repeat(p.grey[..., None], 3, axis=2)).mask, p.mask) for p in validation_pairs]
    assert np.median(scores) >= 0.92


def test_hub_model_loads_offline_from_the_local_cache(tmp_path: Path, kermany_fullres) -> None:
    """The bundled folder placed in a real HF cache loads by `hf-hub:` name with HF_HUB_OFFLINE=1, same masks."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from tests.hub_cache import populate_hf_cache

    populate_hf_cache(tmp_path / "hub", "xray-demo/lungs", BUNDLED)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    image = str(kermany_fullres[0])
    for name, out in (("hf-hub:xray-demo/lungs", "hub"), ("lungs", "bundled")):
        done = subprocess.run([sys.executable, "-m", "xray", "lungs", image, "--out", str(tmp_path / out), "--model",
                               name], env=env, capture_output=True, text=True, timeout=300,
                              cwd=BUNDLED.parents[1])  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"loaded lung segmentation model {name}" in done.stderr
    stem = kermany_fullres[0].stem
    hub, bundled = (np.asarray(Image.open(tmp_path / d / f"{stem}.png")) for d in ("hub", "bundled"))
    assert np.array_equal(hub, bundled) and (hub == 255).mean() > 0.1
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    done = subprocess.run([sys.executable, "-m", "xray", "lungs", image, "--out", str(tmp_path / "x"), "--model",
                           "hf-hub:xray-demo/lungs"], env=env, capture_output=True, text=True, timeout=300,
                          cwd=BUNDLED.parents[1])  # fmt: skip
    assert done.returncode == 2 and "huggingface-cli download xray-demo/lungs" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def use_lung_model(monkeypatch):
    """Set XRAY_LUNG_MODEL for one test (settings are read once per process: the cache is cleared around it)."""
    from xray.config import get_settings

    def use(name: str) -> None:
        monkeypatch.setenv("XRAY_LUNG_MODEL", name)
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("XRAY_LUNG_MODEL", raising=False)
    get_settings.cache_clear()


def test_missing_model_falls_back_to_the_heuristic_and_says_so(tmp_path: Path, use_lung_model, fullres) -> None:
    use_lung_model(f"local-dir:{tmp_path / 'absent'}")
    assert lungs.default_segmenter() is None
    found = lungs.lung_fields(fullres[0])
    assert found.method == lungs.HEURISTIC_METHOD and found.note == lungs.FALLBACK_NOTE
    assert np.array_equal(found.mask, lungs.heuristic_lung_fields(fullres[0]).mask)
    h, w = found.mask.shape
    check = lungs.assess_heatmap(_blob((h, w), (w / 2, h / 2), 0.2 * w), fullres[0])
    assert check.note == lungs.FALLBACK_NOTE and check.method == lungs.HEURISTIC_METHOD
    assert check.summary.endswith("the lung segmentation model is not installed): the shares are approximate.")
    use_lung_model("lungs")
    with_model = lungs.assess_heatmap(_blob((h, w), (w / 2, h / 2), 0.2 * w), fullres[0])
    assert with_model.note is None and "not installed" not in with_model.summary


def test_broken_model_folder_is_an_error_not_a_silent_fallback(tmp_path: Path, use_lung_model, fullres) -> None:
    from xray.errors import ModelConfigError

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"task": "lung-segmentation"}')
    use_lung_model(f"local-dir:{broken}")
    with pytest.raises(ModelConfigError, match="has no model.safetensors"):
        lungs.lung_fields(fullres[0])


def test_importing_loads_no_model() -> None:
    import subprocess
    import sys

    code = ("import sys, xray.trust.lungs as l, xray.analysis.pipeline; "
            "print(l._segmenter_or_none.cache_info().currsize, 'monai' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]


def test_cli_writes_one_mask_per_image_at_its_own_size(kermany_fullres, shared_data, tmp_path: Path) -> None:
    from PIL import Image

    from xray.__main__ import main

    small = sorted((shared_data / "lung-masks" / "images").glob("*.jpg"))[0]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out = tmp_path / "masks"
    assert main(["lungs", str(kermany_fullres[0]), str(small), "--out", str(out), "--overlay"]) == 0
    for source in (kermany_fullres[0], small):
        with Image.open(source) as original:
            size = original.size
        mask = np.asarray(Image.open(out / f"{source.stem}.png"))
        assert mask.shape == (size[1], size[0]) and set(np.unique(mask)) == {0, 255}
        assert 0.1 < (mask == 255).mean() < 0.6
        overlay = Image.open(out / f"{source.stem}_overlay.png")
        assert overlay.size == size and overlay.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{kermany_fullres[0].stem}.png", f"{kermany_fullres[0].stem}_overlay.png", f"{small.stem}.png",
         f"{small.stem}_overlay.png"])  # fmt: skip
    assert main(["lungs", str(bad), str(small), "--out", str(tmp_path / "more")]) == 1
    assert (tmp_path / "more" / f"{small.stem}.png").is_file() and not (tmp_path / "more" / "notes.png").exists()


def test_lung_model_folder_can_be_published_like_a_classifier(capsys) -> None:
    from xray.__main__ import main

    assert main(["publish", str(BUNDLED), "my-lab/lungs", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "my-lab/lungs" in out and "model.safetensors" in out and "config.json" in out
    assert "dry run: nothing uploaded" in out
