from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from xray.imaging.io import read_image
from xray.inference.explain import METHODS, cam_target_layer, explain, overlay_heatmap
from xray.inference.models import load_model_dir, save_model
from xray.inference.predict import predict


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_heatmap_matches_vanilla_pytorch_grad_cam(tiny_model_dir: Path, kermany_fullres: list[Path], method: str):
    """Our single-pass CAM (backward through the head only) equals pytorch-grad-cam with full gradients."""
    loaded = load_model_dir(tiny_model_dir)
    image = read_image(kermany_fullres[-1])
    prediction, explanation = explain(loaded, image, method=method)
    height, width = image.pixels.shape[:2]
    assert explanation.heatmap.shape == (height, width)
    assert explanation.heatmap.dtype == np.float32
    assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() <= 1.0
    assert prediction.probabilities == predict(loaded, [image])[0].probabilities
    assert explanation.target_label == prediction.label

    reference = timm.create_model(loaded.architecture, num_classes=2)
    reference.load_state_dict(loaded.model.state_dict())
    reference.eval()
    layer = cam_target_layer(loaded.model)
    layer_name = next(n for n, m in loaded.model.named_modules() if m is layer)
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM}[method]
    with cam_class(reference, [reference.get_submodule(layer_name)]) as cam:
        target = ClassifierOutputTarget(loaded.label_names.index(prediction.label))
        expected = cam(loaded.transform(image)[None], [target])[0]
    expected = cv2.resize(expected, (width, height), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(explanation.heatmap, expected, atol=1e-4)


def test_chosen_class_is_explained(tiny_model_dir: Path, kermany_fullres: list[Path]):
    loaded = load_model_dir(tiny_model_dir)
    image = read_image(kermany_fullres[0])
    prediction, normal = explain(loaded, image, target_label="NORMAL")
    _, pneumonia = explain(loaded, image, target_label="PNEUMONIA")
    assert normal.target_label == "NORMAL" and pneumonia.target_label == "PNEUMONIA"
    assert prediction.label in {"NORMAL", "PNEUMONIA"}  # the prediction does not follow the explained class
    assert not np.allclose(normal.heatmap, pneumonia.heatmap)


@pytest.mark.parametrize(
    ("arch", "layer"),
    [("mobilenetv3_large_100", "blocks"), ("resnet18", "layer4"), ("efficientnet_lite0", "bn2"),
     ("densenet121", "features")],
)
def test_target_layer_is_last_spatial_map(tmp_path: Path, arch: str, layer: str):
    loaded = load_model_dir(save_model(timm.create_model(arch, num_classes=2), tmp_path / arch, label_names=["A", "B"]))
    found = cam_target_layer(loaded.model)
    assert found is loaded.model.get_submodule(layer)
    _, explanation = explain(loaded, np.zeros((90, 70), np.uint8) + 100)
    assert explanation.heatmap.shape == (90, 70)


def test_bad_arguments_say_what_is_accepted(tiny_model_dir: Path):
    loaded = load_model_dir(tiny_model_dir)
    with pytest.raises(ValueError, match=r"Unknown CAM method 'lime'.*gradcam, gradcam\+\+, hirescam"):
        explain(loaded, np.zeros((32, 32), np.uint8), method="lime")
    with pytest.raises(ValueError, match=r"Unknown class 'COVID'.*NORMAL, PNEUMONIA"):
        explain(loaded, np.zeros((32, 32), np.uint8), target_label="COVID")
    assert set(METHODS) == {"gradcam", "gradcam++", "hirescam"}


def test_overlay_blends_heat_onto_image():
    image = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[:, 15:] = 1.0
    out = overlay_heatmap(image, heat, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    # JET: zero heat is dark blue, full heat dark red.
    assert out[0, 0, 2] > out[0, 0, 0] and out[0, -1, 0] > out[0, -1, 2]
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    with pytest.raises(ValueError, match="opacity must be between 0 and 1"):
        overlay_heatmap(image, heat, alpha=1.5)


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_model_dir_3class"])
def test_features_from_the_same_pass_equal_penultimate_features(fixture: str, request, kermany_fullres: list[Path]):
    from xray.inference.predict import extract_features

    loaded = load_model_dir(request.getfixturevalue(fixture))
    image = read_image(kermany_fullres[2])
    _, explanation = explain(loaded, image)
    expected = extract_features(loaded, [image])[0]
    assert explanation.features is not None and explanation.features.shape == expected.shape
    np.testing.assert_allclose(explanation.features, expected, rtol=1e-4, atol=1e-5)
