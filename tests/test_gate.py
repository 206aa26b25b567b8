"""Input gate: every finding triggered by a real (or, where none exists offline, generated) input; real chest
X-rays pass; OOD statistics fitted, saved, reloaded and applied through a real (tiny) model folder; the learned
view check fitted on the bundled model's features flags real held-out lateral views and passes real frontal ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import load_script
from tests.dicom_files import make_dicom
from xray.errors import OodStatsError
from xray.imaging.io import XrayImage, read_image
from xray.trust import gate
from xray.trust import view as viewcheck

SKLEARN_PHOTO = "datasets/images/china.jpg"


def _photo_path() -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / SKLEARN_PHOTO


@pytest.fixture(scope="module")
def cxr(kermany_fullres: list[Path]) -> XrayImage:
    return read_image(kermany_fullres[0])


@pytest.fixture(scope="module")
def test_images(shared_data: Path) -> list[XrayImage]:
    paths = sorted((shared_data / "kermany-224" / "test").rglob("*.jpeg"))
    return [read_image(p) for p in paths[::25]]


def codes(image) -> list[str]:
    return [f.code for f in gate.check_image(image)]


# ---------------------------------------------------------------- real chest X-rays pass


def test_real_frontal_xrays_raise_no_finding(kermany_fullres: list[Path], test_images: list[XrayImage]) -> None:
    images = [read_image(p) for p in kermany_fullres] + test_images
    flagged = {i: codes(image) for i, image in enumerate(images) if codes(image)}
    assert len(images) == 16 + 25
    assert flagged == {}


def test_real_dicom_radiograph_with_frontal_header_passes(cxr: XrayImage) -> None:
    data = make_dicom(cxr.pixels[..., 0], Modality="DX", ViewPosition="PA", BodyPartExamined="CHEST")
    image = read_image(data, filename="chest.dcm")
    assert image.metadata["ViewPosition"] == "PA"
    assert gate.check_image(image) == []


# ---------------------------------------------------------------- each reason


def test_too_small(cxr: XrayImage) -> None:
    small = np.asarray(Image.fromarray(cxr.pixels).resize((100, 90)))
    findings = gate.check_image(small)
    assert [f.code for f in findings] == ["too_small"]
    assert "100 x 90 pixels" in findings[0].reason and f"{gate.MIN_SIDE} px" in findings[0].reason


def test_colour_photograph() -> None:
    photo = read_image(_photo_path())
    findings = gate.check_image(photo)
    assert "color" in [f.code for f in findings]
    assert "colour image" in next(f.reason for f in findings if f.code == "color")


def test_colour_detected_from_pixels_without_reader_flag() -> None:
    pixels = read_image(_photo_path()).pixels
    assert "color" in codes(XrayImage(pixels=pixels, source_format="PNG", is_color=False))


@pytest.mark.parametrize("level", [0, 128, 255])
def test_nearly_blank(level: int) -> None:
    rng = np.random.default_rng(0)
    flat = np.clip(level + rng.normal(0, 2, (512, 512)), 0, 255).astype(np.uint8)
    findings = gate.check_image(np.stack([flat] * 3, axis=-1))
    assert [f.code for f in findings] == ["blank"]
    assert "nearly blank" in findings[0].reason


def test_inverted_real_xrays(cxr: XrayImage, test_images: list[XrayImage]) -> None:
    for image in [cxr, *test_images]:
        inverted = XrayImage(pixels=255 - image.pixels, source_format="JPEG")
        assert "inverted" in codes(inverted)
    correlation = gate.layout_correlation(cxr.pixels.mean(axis=2))
    assert correlation > 0.5
    assert gate.layout_correlation(255 - cxr.pixels.mean(axis=2)) == pytest.approx(-correlation, abs=1e-6)


def test_ct_slice_by_dicom_modality() -> None:
    import pydicom.data

    image = read_image(pydicom.data.get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    findings = {f.code: f.reason for f in gate.check_image(image)}
    assert "CT slice" in findings["modality"]
    assert "HEAD" in findings["body_part"]


def test_mr_image_by_dicom_modality() -> None:
    import pydicom.data

    image = read_image(pydicom.data.get_testdata_file("examples_overlay.dcm"))
    findings = {f.code: f.reason for f in gate.check_image(image)}
    assert "MR image" in findings["modality"]


def test_ct_slice_with_visible_scan_circle() -> None:
    """A real CT slice exported without windowing (full data range), where the round field of view shows."""
    import pydicom

    raw = pydicom.dcmread(pydicom.data.get_testdata_file("693_J2KI.dcm")).pixel_array.astype(np.float64)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    grey = (np.clip((raw - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    findings = gate.check_image(np.stack([grey] * 3, axis=-1))
    assert "circular_field" in [f.code for f in findings]
    assert next(f for f in findings if f.code == "circular_field").value < gate.CIRCLE_TOLERANCE


@pytest.mark.parametrize(("view", "word"), [("LL", "lateral"), ("RL", "lateral"), ("LLD", "decubitus")])
def test_non_frontal_view_from_dicom_header(cxr: XrayImage, view: str, word: str) -> None:
    image = read_image(make_dicom(cxr.pixels[..., 0], Modality="DX", ViewPosition=view), filename="x.dcm")
    findings = gate.check_image(image)
    assert [f.code for f in findings] == ["view"]
    assert word in findings[0].reason and view in findings[0].reason


def test_other_body_part_from_dicom_header(cxr: XrayImage) -> None:
    image = read_image(make_dicom(cxr.pixels[..., 0], Modality="CR", BodyPartExamined="HAND"), filename="x.dcm")
    assert codes(image) == ["body_part"]


def test_unknown_or_localised_body_part_is_not_flagged(cxr: XrayImage) -> None:
    image = read_image(make_dicom(cxr.pixels[..., 0], Modality="DX", BodyPartExamined="THORAX"), filename="x.dcm")
    assert codes(image) == []


# ---------------------------------------------------------------- Mahalanobis statistics


def test_mahalanobis_hand_computed() -> None:
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    precision = np.diag([1.0, 4.0])  # variance 1 along x, 1/4 along y
    d = gate.mahalanobis(means, precision, np.array([[3.0, 2.0], [9.0, 0.0]]))
    assert d == pytest.approx([np.sqrt(9 + 16), 1.0])  # first: nearest mean is the origin; second: (10, 0)


def test_fit_ood_threshold_is_the_validation_quantile() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 8))
    val = rng.normal(size=(200, 8))
    stats = gate.fit_ood(train, val, quantile=0.95, l2_normalize=False)
    distances = gate.ood_score(stats, val)
    assert stats.threshold == pytest.approx(np.quantile(distances, 0.95))
    assert (distances > stats.threshold).mean() == pytest.approx(0.05, abs=0.006)
    assert stats.means.shape == (1, 8) and stats.n_train == 500 and stats.n_val == 200
    far = gate.ood_score(stats, np.full(8, 6.0))
    assert far[0] > 3 * stats.threshold


def test_fit_ood_class_conditional_means() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 4)) + np.array([5.0, 0, 0, 0])
    b = rng.normal(size=(300, 4)) - np.array([5.0, 0, 0, 0])
    labels = np.array([0] * 300 + [1] * 300)
    stats = gate.fit_ood(np.vstack([a, b]), np.vstack([a[:50], b[:50]]), labels_train=labels, l2_normalize=False)
    assert stats.means.shape == (2, 4)
    assert stats.means[0, 0] == pytest.approx(5.0, abs=0.2) and stats.means[1, 0] == pytest.approx(-5.0, abs=0.2)
    # the midpoint between the classes is far from both, though it is the pooled mean
    assert gate.ood_score(stats, np.zeros(4))[0] > stats.threshold


def test_l2_normalised_score_ignores_feature_scale() -> None:
    rng = np.random.default_rng(4)
    stats = gate.fit_ood(rng.normal(1.0, 1.0, size=(300, 6)), rng.normal(1.0, 1.0, size=(100, 6)))
    assert stats.l2_normalized
    probe = rng.normal(1.0, 1.0, size=(5, 6))
    assert gate.ood_score(stats, 7.0 * probe) == pytest.approx(gate.ood_score(stats, probe))


def test_ood_view_is_a_model_sized_jpeg_copy(cxr: XrayImage) -> None:
    view = gate.ood_view(cxr, (224, 224))
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8
    again = gate.ood_view(cxr, (224, 224))
    assert np.array_equal(view, again)
    resized = np.asarray(Image.fromarray(cxr.pixels).resize((224, 224), Image.Resampling.BILINEAR), dtype=float)
    assert 0 < np.abs(view - resized).mean() < 3  # JPEG q75 changes pixels a little, not the picture


def test_fit_ood_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same D"):
        gate.fit_ood(np.zeros((20, 3)), np.zeros((20, 4)))
    with pytest.raises(ValueError, match="at least 10"):
        gate.fit_ood(np.zeros((5, 3)), np.zeros((20, 3)))


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "x", "num_classes": 2}), encoding="utf-8")
    assert gate.load_ood(tmp_path) is None
    stats = gate.fit_ood(rng.normal(size=(200, 16)), rng.normal(size=(50, 16)))
    path = gate.save_ood(stats, tmp_path)
    assert path.name == "ood.npz"
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["architecture"] == "x" and config["ood"]["threshold"] == pytest.approx(stats.threshold)
    loaded = gate.load_ood(tmp_path)
    assert loaded.l2_normalized and config["ood"]["l2_normalized"] is True
    probe = rng.normal(size=(30, 16))
    assert gate.ood_score(loaded, probe) == pytest.approx(gate.ood_score(stats, probe), rel=1e-3)
    with pytest.raises(OodStatsError, match="expect 16 features"):
        gate.ood_score(loaded, np.zeros((1, 8)))
    path.write_bytes(b"not an npz file")
    with pytest.raises(OodStatsError, match="refit"):
        gate.load_ood(tmp_path)


# ---------------------------------------------------------------- the whole gate on a real model folder


@pytest.fixture(scope="module")
def model_with_ood(tiny_model_dir: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from xray.inference.models import load_model

    folder = tmp_path_factory.mktemp("gate") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    paths = sorted((shared_data / "kermany-224" / "train").rglob("*.jpeg"))
    chosen = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))[:120]]
    images = [read_image(p) for p in chosen]
    loaded = load_model(f"local-dir:{folder}")
    stats = gate.fit_model_ood(loaded, images[:80], images[80:], folder)
    assert (folder / "ood.npz").is_file() and stats.n_train == 80 and stats.n_val == 40
    return load_model(f"local-dir:{folder}")


def test_assess_flags_photo_as_out_of_distribution(model_with_ood) -> None:
    result = gate.assess(model_with_ood, read_image(_photo_path()))
    assert not result.in_scope
    assert {"color", "out_of_distribution"} <= set(result.codes)
    assert result.ood_distance > result.ood_threshold
    assert "unlike its training X-rays" in result.warning and "colour image" in result.warning


def test_assess_grey_photo_caught_by_features_alone(model_with_ood) -> None:
    pixels = read_image(_photo_path()).pixels.mean(axis=2).astype(np.uint8)
    grey = XrayImage(pixels=np.ascontiguousarray(np.stack([pixels] * 3, axis=-1)), source_format="PNG")
    assert "color" not in codes(grey)
    result = gate.assess(model_with_ood, grey)
    assert "out_of_distribution" in result.codes


def test_assess_keeps_real_xrays_in_scope(model_with_ood, test_images: list[XrayImage]) -> None:
    results = [gate.assess(model_with_ood, image) for image in test_images]
    assert all(r.ood_distance is not None for r in results)
    assert sum(r.in_scope for r in results) >= len(results) - 1  # threshold = 99% validation quantile
    assert all(r.warning is None for r in results if r.in_scope)


def test_view_statistics_compute_their_own_features(model_with_ood, test_images: list[XrayImage]) -> None:
    """Statistics fitted on `ood_view` copies ignore the prediction's features and score the copy."""
    stats = gate.ood_stats_for(model_with_ood)
    assert stats.view and stats.l2_normalized
    raw = gate.penultimate_features(model_with_ood, test_images[:1])[0]
    given = gate.assess(model_with_ood, test_images[0], features=raw)
    expected = gate.ood_score(stats, gate.ood_features(model_with_ood, test_images[:1], stats))[0]
    assert given.ood_distance == pytest.approx(expected, rel=1e-5)
    assert gate.assess(model_with_ood, test_images[0]).ood_distance == pytest.approx(expected, rel=1e-5)


def test_raw_input_statistics_use_the_given_features(tiny_model_dir: Path, test_images: list[XrayImage],
                                                     tmp_path: Path) -> None:
    """Statistics fitted before the canonical view (no `view` in config) score the prediction's features."""
    from xray.inference.models import load_model

    folder = tmp_path / "raw"
    shutil.copytree(tiny_model_dir, folder)
    loaded = load_model(f"local-dir:{folder}")
    features = gate.penultimate_features(loaded, test_images)
    gate.save_ood(gate.fit_ood(features[:15], features[10:], l2_normalize=False), folder)
    assert json.loads((folder / "config.json").read_text())["ood"]["view"] is None
    loaded = load_model(f"local-dir:{folder}")
    stats = gate.ood_stats_for(loaded)
    assert not stats.view
    result = gate.assess(loaded, test_images[0], features=features[0])
    assert result.ood_distance == pytest.approx(gate.ood_score(stats, features[:1])[0])
    assert gate.assess(loaded, test_images[0]).ood_distance == pytest.approx(result.ood_distance, rel=1e-4)


def test_ood_flag_quotes_how_often_it_fires_on_in_scope_images(model_with_ood, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    from xray.inference.models import load_model

    photo = read_image(_photo_path())
    unmeasured = gate.assess(model_with_ood, photo)
    assert "For scale" not in " ".join(unmeasured.reasons)
    folder = shutil.copytree(model_with_ood.path, tmp_path / "measured")
    gate.record_in_scope_flagged(folder, set_name="official Kermany test X-rays", flagged=40, n=624)
    result = gate.assess(load_model(f"local-dir:{folder}"), photo)
    reason = next(f.reason for f in result.findings if f.code == "out_of_distribution")
    assert reason.endswith("For scale, it also flags 40 of the 624 official Kermany test X-rays (6.4%), all of them "
                           "in scope.")
    assert result.ood_distance == pytest.approx(unmeasured.ood_distance)  # quoted, nothing else changes
    # refitting the statistics drops the figure: a measurement of other statistics is never quoted
    stats = gate.load_ood(folder)
    assert stats.in_scope_flagged == {"set": "official Kermany test X-rays", "flagged": 40, "n": 624}
    gate.save_ood(stats, folder)
    assert gate.load_ood(folder).in_scope_flagged is None
    with pytest.raises(OodStatsError, match="no OOD statistics"):
        gate.record_in_scope_flagged(tiny_model_dir, set_name="x", flagged=1, n=2)


def test_model_with_input_jpeg_step_scores_the_predictions_own_features(tiny_model_dir: Path,
                                                                        test_images: list[XrayImage],
                                                                        tmp_path: Path) -> None:
    """Its transform already makes the canonical copy: the gate is fitted on, and reuses, the prediction's features."""
    from xray.inference.models import load_model, update_config
    from xray.inference.predict import preprocess

    folder = shutil.copytree(tiny_model_dir, tmp_path / "jpeg")
    update_config(folder, input_jpeg_quality=75)
    loaded = load_model(f"local-dir:{folder}")
    stats = gate.fit_model_ood(loaded, test_images[:15], test_images[10:], folder)
    assert not stats.view and json.loads((folder / "config.json").read_text())["ood"]["view"] is None
    own = gate.penultimate_features(loaded, test_images[:1])
    # the prediction's own input: resize + JPEG 75 by the model's transform, no ood_view copy on top
    batch = preprocess(loaded, test_images[:1])
    with torch.inference_mode():
        direct = loaded.model.forward_head(loaded.model.forward_features(batch), pre_logits=True).numpy()
    np.testing.assert_allclose(own, direct, rtol=1e-4, atol=1e-4)
    reloaded = load_model(f"local-dir:{folder}")
    given = gate.assess(reloaded, test_images[0], features=own[0])
    assert given.ood_distance == pytest.approx(float(gate.ood_score(stats, own)[0]), rel=1e-4)
    assert gate.assess(reloaded, test_images[0]).ood_distance == pytest.approx(given.ood_distance, rel=1e-4)


def test_verdict_combines_image_checks_and_score(model_with_ood) -> None:
    stats = gate.ood_stats_for(model_with_ood)
    photo = read_image(_photo_path())
    feats = gate.ood_features(model_with_ood, [photo], stats)[0]
    result = gate.verdict(photo, stats, feats)
    assert result.codes == gate.assess(model_with_ood, photo).codes
    assert gate.verdict(photo, None, None).codes == ["color"]


def test_assess_without_ood_statistics_runs_image_checks_only(tiny_model_dir: Path) -> None:
    from xray.inference.models import load_model

    loaded = load_model(f"local-dir:{tiny_model_dir}")
    result = gate.assess(loaded, read_image(_photo_path()))
    assert result.ood_distance is None and result.codes == ["color"]


def test_half_precision_storage_keeps_distances(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    scales = np.logspace(-3, 1, 32)  # feature variances over four decades: precision entries up to 1e6
    stats = gate.fit_ood(rng.normal(size=(400, 32)) * scales, rng.normal(size=(100, 32)) * scales)
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    gate.save_ood(stats, tmp_path, half=True)
    probe = rng.normal(size=(50, 32)) * scales
    assert gate.ood_score(gate.load_ood(tmp_path), probe) == pytest.approx(gate.ood_score(stats, probe), rel=2e-2)


# ---------------------------------------------------------------- learned view check


@pytest.mark.parametrize(("name", "group"), [
    ("covid-19-caso-95-2-16.jpg", "covid-19-caso-95"),
    ("covid-19-caso-95-4-12.jpg", "covid-19-caso-95"),
    ("covid-19-caso-70-1-L.jpg", "covid-19-caso-70"),
    ("covid-19-pneumonia-14-L.jpg", "covid-19-pneumonia-14"),
    ("covid-19-pneumonia-20-l-on-admission.jpg", "covid-19-pneumonia-20"),
    ("covid-19-pneumonia-22-day1-l.jpg", "covid-19-pneumonia-22"),
    ("covid-19-pneumonia-evolution-over-a-week-1-day0-L.jpg", "covid-19-pneumonia-evolution-over-a-week-1"),
    ("covid-19-infection-exclusive-gastrointestinal-symptoms-l.jpg",
     "covid-19-infection-exclusive-gastrointestinal-symptoms"),
    ("right-upper-lobe-pneumonia-9-L.jpg", "right-upper-lobe-pneumonia-9"),
    ("16663_1_2.jpg", "eurorad-16663"),
    ("35AF5C3B-D04D-4B4B-92B7-CB1F67D83085.jpg", "unknown:uuid"),
    ("D5ACAA93-C779-4E22-ADFA-6A220489F840.jpg", "unknown:uuid"),
    ("f7ea5303f5e3ea16bdd4fd93df84fb_jumbo-1.jpg", "unknown:jumbo"),
    ("000009-5.jpg", "unknown:eurorad-figure"),
    ("000001-9-b.jpg", "unknown:eurorad-figure"),
])
def test_lateral_patient_id_from_file_name(name: str, group: str) -> None:
    assert viewcheck.lateral_patient_id(Path("/x") / name) == group


@pytest.fixture(scope="module")
def lateral_paths(shared_data: Path) -> list[Path]:
    paths = sorted(p for p in (shared_data / "lateral").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no lateral views in {shared_data / 'lateral'}")
    return paths


def test_lateral_folder_groups_and_held_out_split(lateral_paths: list[Path]) -> None:
    groups = {viewcheck.lateral_patient_id(p) for p in lateral_paths}
    # 28 images of 16 patients (data README); names that say nothing about the patient are merged into one
    # group each (uuid, jumbo, eurorad figure), so one patient never lands on both sides of the split
    assert len(lateral_paths) == 28 and len(groups) == 17
    fit, held = viewcheck.split_lateral(lateral_paths, seed=0)
    assert sorted(fit + held) == lateral_paths
    fit_groups = {viewcheck.lateral_patient_id(p) for p in fit}
    held_groups = {viewcheck.lateral_patient_id(p) for p in held}
    assert not fit_groups & held_groups and len(held_groups) == round(17 / 3)
    assert viewcheck.split_lateral(lateral_paths, seed=0) == (fit, held)  # fixed by the seed
    assert viewcheck.split_lateral(lateral_paths, seed=1) != (fit, held)


def _clusters(rng: np.random.Generator, n: int = 60, d: int = 12) -> tuple[np.ndarray, list[str], list[str]]:
    centres = {"frontal": np.eye(d)[0] * 4, "lateral": np.eye(d)[1] * 4, "other": np.eye(d)[2] * 4}
    rows, labels, groups = [], [], []
    for name, centre in centres.items():
        rows.append(centre + rng.normal(size=(n, d)) + 5)  # offset: unit-length rows still separate
        labels += [name] * n
        groups += [f"{name}:{i // 2}" for i in range(n)]
    return np.vstack(rows), labels, groups


def test_fit_view_check_chooses_c_by_grouped_cross_validation() -> None:
    x, labels, groups = _clusters(np.random.default_rng(0))
    check = viewcheck.fit_view_check(x, labels, groups, c_grid=(0.01, 1.0), folds=3)
    assert check.c in (0.01, 1.0) and set(check.info["cv"]["log_loss"]) == {"0.01", "1.0"}
    recall = check.info["cv"]["out_of_fold_recall"]
    assert all(r["n"] == 60 and r["correct"] >= 55 for r in recall.values())
    assert check.decide(x[[0, 60, 120]]) == ["frontal", "lateral", "other"]
    assert check.info["n"]["lateral"] == {"images": 60, "rows": 60, "groups": 30}
    with pytest.raises(ValueError, match="no rows of class"):
        viewcheck.fit_view_check(x[:120], labels[:120], groups[:120])
    with pytest.raises(ValueError, match="unknown view labels"):
        viewcheck.fit_view_check(x, ["front"] * len(x), groups)


def test_view_check_save_load_round_trip_and_reasons(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, labels, groups = _clusters(rng)
    check = viewcheck.fit_view_check(x, labels, groups, c_grid=(0.1,))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "x", "num_classes": 2}), encoding="utf-8")
    assert viewcheck.load_view_check(tmp_path) is None
    path = viewcheck.save_view_check(check, tmp_path, lateral={"held_out_files": ["a.jpg"]})
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    entry = config["view_check"]
    assert path.name == "view.npz" and entry["file"] == "view.npz" and config["architecture"] == "x"
    assert entry["rule"] == "argmax of the class probabilities" and entry["C"] == 0.1
    assert entry["findings"] == {"lateral": "lateral_view", "other": "not_chest_xray"}
    loaded = viewcheck.load_view_check(tmp_path)
    assert loaded.info["lateral"] == {"held_out_files": ["a.jpg"]} and loaded.view
    probe = rng.normal(size=(20, 12)) + 5
    np.testing.assert_allclose(loaded.probabilities(probe), check.probabilities(probe), rtol=1e-5, atol=1e-6)
    assert loaded.probabilities(probe).sum(axis=1) == pytest.approx(np.ones(20))
    with pytest.raises(OodStatsError, match="expects 12 features"):
        loaded.probabilities(np.zeros((1, 8)))
    code, reason, value = viewcheck.finding(loaded, np.array([0.02, 0.97, 0.01]))
    assert code == "lateral_view" and value == pytest.approx(0.97)
    assert reason == ("This looks like a lateral view (view check: 97% lateral); the model reads frontal chest X-rays "
                      "only.")
    code, reason, _ = viewcheck.finding(loaded, np.array([0.1, 0.1, 0.8]))
    assert code == "not_chest_xray" and reason.startswith("This does not look like a chest X-ray (view check: 80%")
    assert viewcheck.finding(loaded, np.array([0.5, 0.3, 0.2])) is None
    path.write_bytes(b"not an npz file")
    with pytest.raises(OodStatsError, match="refit"):
        viewcheck.load_view_check(tmp_path)


def test_augment_keeps_size_and_picture(cxr: XrayImage) -> None:
    rng = np.random.default_rng(0)
    copy = viewcheck.augment(cxr.pixels, rng)
    assert copy.shape == cxr.pixels.shape and copy.dtype == np.uint8
    assert not np.array_equal(copy, cxr.pixels)
    assert gate.layout_correlation(copy.mean(axis=2)) > 0.3  # still a frontal chest X-ray, not noise


@pytest.fixture(scope="module")
def view_model(shared_data: Path, lateral_paths: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """The bundled pneumonia model (real EfficientNet-Lite0 features) with a view check fitted on a small sample.

    Frontal: 40 Kermany training children, 12 covid-chestxray and 12 adult-cxr training adults; lateral: the fit
    patients' images and 2 augmented copies each; other: the bundled photographs and their grey copies.
    """
    from xray.inference.models import load_model
    from xray.training.data import load_samples

    bundled = Path(__file__).resolve().parents[1] / "models" / "pneumonia"
    if not (bundled / "ood.npz").is_file():
        pytest.skip("the bundled pneumonia model (with OOD statistics) is absent")
    folder = shutil.copytree(bundled, tmp_path_factory.mktemp("view") / "pneumonia")
    eval_gate = load_script("eval_gate")
    rng = np.random.default_rng(0)
    kermany = sorted((shared_data / "kermany-224" / "train").rglob("*.jpeg"))
    frontal = [kermany[i] for i in rng.permutation(len(kermany))[:40]]
    covid = sorted((shared_data / "covid-chestxray" / "images").glob("*"))
    frontal += [covid[i] for i in rng.permutation(len(covid))[:12]]
    adults = [s.source for s in load_samples(shared_data / "adult-cxr") if s.split == "train"]
    frontal += [adults[i] for i in rng.permutation(len(adults))[:12]]
    images = [read_image(p) for p in frontal]
    labels, groups = ["frontal"] * len(images), [f"frontal:{p.name}" for p in frontal]
    fit, held = viewcheck.split_lateral(lateral_paths, seed=0)
    for path in fit:
        image = read_image(path)
        images += [image.pixels, viewcheck.augment(image.pixels, rng), viewcheck.augment(image.pixels, rng)]
        labels += ["lateral"] * 3
        groups += [viewcheck.lateral_patient_id(path)] * 3
    for path in eval_gate.photo_files():
        photo = read_image(path)
        images += [photo, eval_gate._grey_copy(photo)]
        labels += ["other"] * 2
        groups += [path.name] * 2
    loaded = load_model(f"local-dir:{folder}")
    check = gate.fit_model_view_check(loaded, images, labels, groups, folder, c_grid=(0.1,),
                                      lateral={"held_out_files": [p.name for p in held]})
    # the same features as the OOD statistics: ood_view copies, or the images as given for a model whose own
    # transform makes that copy (input JPEG step)
    assert check.view == gate.feature_view(loaded) == gate.load_ood(folder).view
    assert check.info["n"]["lateral"]["rows"] == 3 * len(fit)
    return load_model(f"local-dir:{folder}"), held


def test_view_check_flags_held_out_lateral_views(view_model) -> None:
    loaded, held = view_model
    assert gate.view_check_for(loaded) is not None and len(held) >= 5
    results = [gate.assess(loaded, read_image(p)) for p in held]
    assert all("lateral_view" in r.codes for r in results), [r.view_probabilities for r in results]
    reason = next(f.reason for f in results[0].findings if f.code == "lateral_view")
    assert reason.startswith("This looks like a lateral view (view check: ") and "% lateral); the model reads" in reason
    assert all(not r.in_scope and r.view_probabilities["lateral"] > 0.5 for r in results)


def test_view_check_passes_real_frontal_children_and_adults(view_model, kermany_fullres: list[Path],
                                                            shared_data: Path) -> None:
    from xray.training.data import load_samples

    loaded, _ = view_model
    adults = [s for s in load_samples(shared_data / "adult-cxr") if s.split == "test"]
    sources = sorted({s.data_source for s in adults})
    per_source = [s.source for source in sources for s in [a for a in adults if a.data_source == source][:4]]
    results = [gate.assess(loaded, read_image(p)) for p in [*kermany_fullres, *per_source]]
    assert len(sources) >= 3 and len(results) == 16 + 4 * len(sources)
    view_codes = [r.codes for r in results if {"lateral_view", "not_chest_xray"} & set(r.codes)]
    assert view_codes == []
    assert all(r.view_probabilities["frontal"] > 0.5 for r in results)


def test_view_check_scores_the_features_of_the_ood_statistics(view_model, kermany_fullres: list[Path]) -> None:
    """One forward pass: the view check reads the same features as the OOD score, given or computed."""
    loaded, _ = view_model
    stats = gate.ood_stats_for(loaded)
    image = read_image(kermany_fullres[0])
    features = gate.ood_features(loaded, [image], stats)[0]
    batch = gate.verdict(image, stats, features)
    assert batch.view_probabilities == pytest.approx(gate.assess(loaded, image).view_probabilities, rel=1e-4)
    expected = stats.view_check.probabilities(features)[0]
    assert list(batch.view_probabilities.values()) == pytest.approx(expected.tolist())


def test_view_check_fitted_on_other_features_is_refused(view_model, tmp_path: Path) -> None:
    from xray.inference.models import load_model, update_config

    loaded, _ = view_model
    folder = shutil.copytree(loaded.path, tmp_path / "mismatch")
    entry = json.loads((folder / "config.json").read_text())["view_check"]
    # claim the other kind of features than the OOD statistics' (ood_view copies vs the images as given)
    update_config(folder, view_check={**entry, "view": None if entry["view"] else "resized, JPEG 75"})
    with pytest.raises(OodStatsError, match="refit both"):
        gate.ood_stats_for(load_model(f"local-dir:{folder}"))


def test_image_checks_give_the_same_values_for_an_xray_image_and_its_pixels(
    kermany_fullres: list[Path], test_images: list[XrayImage]
) -> None:
    """The checks start from the image's shared preview; an array goes through the same reduction."""
    for image in [*(read_image(p) for p in kermany_fullres[:4]), *test_images[:6]]:
        for candidate in (image, XrayImage(pixels=255 - image.pixels, source_format="JPEG")):
            by_image = [(f.code, f.value) for f in gate.check_image(candidate)]
            by_pixels = [(f.code, f.value) for f in gate.check_image(np.array(candidate.pixels))]
            assert by_image == by_pixels
    assert any(f.code == "inverted" for f in gate.check_image(255 - read_image(kermany_fullres[0]).pixels))
