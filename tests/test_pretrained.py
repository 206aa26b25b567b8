"""ImageNet initialisation: the offline EfficientNet-Lite0 rename, and actionable errors when no source exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xray.errors import PretrainedWeightsError
from xray.training.pretrained import (
    create_model,
    efficientnet_lite0_offline,
    efficientnet_lite_offline,
    lukemelas_to_timm,
)

# ImageNet-1k class indices: 652 military uniform, 834 suit, 457 bow tie, 906 Windsor tie
MILITARY_UNIFORM = 652
BOW_TIE = 457


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    return efficientnet_lite0_offline().eval()


def _grace_hopper():
    import matplotlib.cbook

    from xray.imaging.io import read_image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        return read_image(handle.read())


def test_renamed_weights_classify_a_natural_image(lite0_imagenet):
    from xray.imaging.transforms import build_transform, data_config_for

    # Grace Hopper in US Navy uniform: the ImageNet top-1 must be "military uniform".
    transform = build_transform(data_config_for(lite0_imagenet), train=False)
    with torch.inference_mode():
        probs = lite0_imagenet(transform(_grace_hopper()).unsqueeze(0)).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == MILITARY_UNIFORM
    assert probs[MILITARY_UNIFORM] > 0.2


def test_offline_weights_use_tf_lite_normalisation_end_to_end(lite0_imagenet, tmp_path):
    from xray.inference.models import load_model_dir, save_model

    model = efficientnet_lite0_offline(num_classes=2)
    assert model.get_classifier().out_features == 2
    # every backbone tensor came from the package: the new model equals the ImageNet one outside the head
    reference = lite0_imagenet.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, reference[key]), key
    loaded = load_model_dir(save_model(model, tmp_path / "m", label_names=["NORMAL", "PNEUMONIA"]))
    assert tuple(loaded.data_config["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(loaded.data_config["std"]) == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.model(x).numpy(), model.eval()(x).numpy(), atol=1e-5)


@pytest.mark.parametrize(("architecture", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_and_lite2_packages_classify_a_natural_image_at_their_own_size(architecture, size):
    from xray.imaging.transforms import build_transform, data_config_for

    model = efficientnet_lite_offline(architecture).eval()
    config = data_config_for(model)
    assert config["input_size"] == (3, size, size)
    assert tuple(config["mean"]) == (0.5, 0.5, 0.5)
    with torch.inference_mode():
        probs = model(build_transform(config, train=False)(_grace_hopper()).unsqueeze(0)).softmax(1)[0]
    # the bigger Lites split their vote between her uniform and her bow tie: both lead, well above chance
    top2 = set(probs.topk(2).indices.tolist())
    assert top2 == {MILITARY_UNIFORM, BOW_TIE}
    assert probs[MILITARY_UNIFORM] > 0.05


def test_an_architecture_without_an_offline_package_is_named_in_the_error():
    with pytest.raises(PretrainedWeightsError, match="efficientnet_lite2"):
        efficientnet_lite_offline("efficientnet_lite4")


def test_rename_rejects_a_checkpoint_of_another_shape():
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        lukemelas_to_timm({"_x.weight": torch.zeros(3, 4), "_x.bias": torch.zeros(4)}, target)
    with pytest.raises(PretrainedWeightsError, match="1 tensors for 2"):
        lukemelas_to_timm({"_x.weight": torch.zeros(4, 3)}, target)


def test_imagenet_without_any_source_fails_with_options(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PretrainedWeightsError) as info:
        create_model("resnet18", 2, init="imagenet")
    message = str(info.value)
    assert "--init scratch" in message and "efficientnet_lite0" in message and "HF_HOME" in message


def test_imagenet_offline_falls_back_to_the_package(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = create_model("efficientnet_lite0", 3, init="imagenet")
    assert model.get_classifier().out_features == 3
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    scratch = create_model("efficientnet_lite0", 3, init="scratch")
    assert not torch.equal(model.conv_stem.weight, scratch.conv_stem.weight)
