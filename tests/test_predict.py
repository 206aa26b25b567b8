from pathlib import Path

import numpy as np
import pytest
import torch

from xray.imaging.io import read_image
from xray.inference.models import load_model_dir, update_config
from xray.inference.predict import decide, predict, preprocess, to_prediction


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))


def test_batched_predict_matches_one_by_one_on_real_images(tiny_model_dir: Path, kermany_fullres: list[Path]):
    loaded = load_model_dir(tiny_model_dir)
    images = [read_image(p) for p in kermany_fullres[:5]]
    batched = predict(loaded, images, batch_size=2)
    single = [predict(loaded, [img])[0] for img in images]
    assert len(batched) == 5
    for a, b in zip(batched, single, strict=True):
        assert set(a.probabilities) == {"NORMAL", "PNEUMONIA"}
        assert abs(sum(a.probabilities.values()) - 1.0) < 1e-5
        for k in a.probabilities:
            assert abs(a.probabilities[k] - b.probabilities[k]) < 1e-4


def test_transform_resizes_whole_image_without_crop(tiny_model_dir: Path):
    loaded = load_model_dir(tiny_model_dir)
    # A bright one-pixel frame must survive: a centre crop would cut it away.
    image = np.zeros((400, 300, 3), np.uint8)
    image[:8], image[-8:], image[:, :8], image[:, -8:] = 255, 255, 255, 255
    x = preprocess(loaded, [image])[0]
    assert tuple(x.shape) == tuple(loaded.data_config["input_size"])
    mean, std = torch.tensor(loaded.data_config["mean"]), torch.tensor(loaded.data_config["std"])
    white = (1 - mean) / std
    for edge in (x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]):
        assert torch.allclose(edge.mean(dim=1), white, atol=0.05)


def test_input_jpeg_step_processes_uploads_like_jpeg_training_copies(model_copy: Path, kermany_fullres: list[Path]):
    from PIL import Image

    from xray.errors import ModelConfigError
    from xray.imaging.transforms import jpeg_round_trip, resize_pixels

    plain = load_model_dir(model_copy)
    upload = read_image(kermany_fullres[0])
    # by hand: resize to the input size, JPEG at quality 75 - the form of a 224-px JPEG training copy
    copy = np.asarray(jpeg_round_trip(Image.fromarray(resize_pixels(upload, plain.data_config)), quality=75))
    update_config(model_copy, input_jpeg_quality=75)
    with_step = load_model_dir(model_copy)
    assert torch.allclose(preprocess(with_step, [upload]), preprocess(plain, [copy]), atol=1e-6)
    assert not torch.allclose(preprocess(with_step, [upload]), preprocess(plain, [upload]), atol=1e-3)
    assert predict(with_step, [upload])[0].probabilities == pytest.approx(predict(plain, [copy])[0].probabilities)
    for bad in (0, 100, "75", 7.5, True):
        update_config(model_copy, input_jpeg_quality=bad)
        with pytest.raises(ModelConfigError, match="input_jpeg_quality must be an integer from 1 to 95"):
            load_model_dir(model_copy)


def test_temperature_softens_probabilities_and_keeps_argmax(model_copy: Path):
    logits = torch.tensor([0.0, 2.0])
    cold = to_prediction(load_model_dir(model_copy), logits)
    update_config(model_copy, temperature=4.0)
    warm = to_prediction(load_model_dir(model_copy), logits)
    assert cold.probabilities["PNEUMONIA"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert warm.probabilities["PNEUMONIA"] == pytest.approx(1 / (1 + np.exp(-0.5)), abs=1e-6)
    assert cold.label == warm.label == "PNEUMONIA"


def test_binary_decision_uses_the_operating_threshold(model_copy: Path):
    update_config(model_copy, threshold=0.3)
    loaded = load_model_dir(model_copy)
    assert decide(loaded, [0.75, 0.25]) == "NORMAL"
    assert decide(loaded, [0.65, 0.35]) == "PNEUMONIA"
    assert decide(loaded, [0.65, 0.35], threshold=0.5) == "NORMAL"
    assert to_prediction(loaded, torch.tensor([0.5, 0.0])).label == "PNEUMONIA"  # p=0.38 >= 0.3


def test_three_class_model_uses_argmax(tiny_model_dir_3class: Path):
    loaded = load_model_dir(tiny_model_dir_3class)
    assert loaded.threshold is None
    assert decide(loaded, [0.2, 0.3, 0.5]) == "COVID-19"
    [pred] = predict(loaded, [np.full((64, 64), 128, np.uint8)])
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)


@pytest.mark.parametrize("arch", ["mobilenetv3_large_100", "efficientnet_lite0", "resnet18", "densenet121"])
def test_onnx_runtime_path_gives_the_same_probabilities_and_heatmap(arch: str, tmp_path: Path, kermany_fullres):
    """The accelerated path (ONNX Runtime features + PyTorch head) matches eager PyTorch within 1e-4."""
    import timm

    from xray.inference.explain import explain
    from xray.inference.models import save_model

    torch.manual_seed(0)
    folder = save_model(timm.create_model(arch, num_classes=2), tmp_path / arch, label_names=["NORMAL", "PNEUMONIA"])
    fast, eager = load_model_dir(folder, accelerated=True), load_model_dir(folder, accelerated=False)
    images = [read_image(p) for p in kermany_fullres[:3]]
    for a, b in zip(predict(fast, images), predict(eager, images), strict=True):
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
    (pa, ea), (pb, eb) = explain(fast, images[0]), explain(eager, images[0])
    assert max(abs(pa.probabilities[k] - pb.probabilities[k]) for k in pa.probabilities) < 1e-4
    assert ea.target_label == eb.target_label
    np.testing.assert_allclose(ea.heatmap, eb.heatmap, atol=1e-3)
    np.testing.assert_allclose(ea.features, eb.features, rtol=1e-4, atol=1e-4)
