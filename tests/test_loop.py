"""The training loop's pieces on real X-rays: the bf16 step, the network input, the precision choice."""

from __future__ import annotations

import pytest
import timm
import torch

from xray.imaging.transforms import build_transform, data_config_for
from xray.training.augment import CachedImages, build_augment
from xray.training.cache import cached_pixels
from xray.training.data import Sample
from xray.training.loop import bf16_supported, network_input, probe_precision, resolve_precision, train_step


@pytest.fixture(scope="module")
def batch(shared_data, tmp_path_factory):
    """Eight real Kermany X-rays (4 NORMAL, 4 PNEUMONIA) from the pixel cache, augmented as training does."""
    root = shared_data / "kermany-224" / "train"
    samples = [Sample(p, label, p.stem) for label in ("NORMAL", "PNEUMONIA")
               for p in sorted((root / label).glob("*.jpeg"))[:4]]  # fmt: skip
    pixels = cached_pixels(samples, (224, 224), "bicubic", cache_dir=tmp_path_factory.mktemp("pixels")).pixels
    dataset = CachedImages(pixels, [0] * 4 + [1] * 4)
    images, labels, index = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (8, 1, 224, 224) and index.tolist() == list(range(8))
    assert torch.equal(images, pixels)
    torch.manual_seed(0)
    return build_augment(intensity=0.1)(images), labels, pixels


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bf16")
def test_a_bf16_step_has_a_finite_loss_and_keeps_fp32_weights(batch):
    images, labels, _ = batch
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=2).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.conv1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    x = network_input(images, torch.device("cpu"), data_config_for(model))
    loss = train_step(model, optimizer, x, labels, torch.nn.CrossEntropyLoss(), precision="bf16")
    assert seen == [torch.bfloat16]  # the convolutions ran in bf16
    assert torch.isfinite(loss) and loss.dtype == torch.float32 and 0 < float(loss) < 10
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32, name
        assert torch.isfinite(param).all(), name
    for state in optimizer.state.values():  # AdamW's moments too
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert not torch.equal(model.state_dict()["fc.weight"], before["fc.weight"])  # it stepped
    # a second step on the same batch lowers the loss: the bf16 gradients point the right way
    again = train_step(model, optimizer, x, labels, torch.nn.CrossEntropyLoss(), precision="bf16")
    assert float(again) < float(loss)


def test_the_network_input_is_the_evaluation_transform_of_the_cached_pixels(batch):
    _, _, pixels = batch
    model = timm.create_model("mobilenetv3_small_100", num_classes=2)
    config = data_config_for(model)
    x = network_input(pixels, torch.device("cpu"), config)
    assert x.dtype == torch.float32 and tuple(x.shape) == (8, 3, 224, 224)
    assert x.is_contiguous(memory_format=torch.channels_last)
    evaluate = build_transform(config)  # the app's preprocessing of an upload, from the same data config
    for i in range(len(pixels)):
        assert torch.equal(x[i], evaluate(pixels[i, 0].numpy()))


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("auto" if bf16_supported(cpu) else "fp32")  # auto: measured
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cpu)


def test_auto_precision_takes_bf16_only_for_a_real_gain():
    from xray.training.loop import BF16_MIN_GAIN, faster_precision

    assert faster_precision({"fp32": 8.0, "bf16": 16.6}) == "bf16"  # ResNet-50's probe
    assert faster_precision({"fp32": 9.195, "bf16": 9.209}) == "fp32"  # EfficientNet-Lite2's: noise
    assert faster_precision({"fp32": 19.5, "bf16": 17.9}) == "fp32"
    assert faster_precision({"fp32": 10.0, "bf16": 10.0 * BF16_MIN_GAIN}) == "bf16"


def test_the_precision_probe_times_both_on_a_copy_and_leaves_the_run_untouched(batch):
    _, labels, pixels = batch
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=2).train().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    speeds = probe_precision(model, pixels[:4], labels[:4], data_config_for(model), device=torch.device("cpu"),
                             steps=1, rounds=1)  # fmt: skip
    assert set(speeds) == {"fp32", "bf16"} and min(speeds.values()) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # weights and BatchNorm statistics
    assert torch.equal(torch.get_rng_state(), rng)


def test_augmentation_draws_per_image_and_off_means_identity(batch):
    _, _, pixels = batch
    assert build_augment(rotation=0, translate=0, zoom=0, intensity=0) is None
    torch.manual_seed(1)
    augmented = build_augment(intensity=0.1)(pixels)
    assert augmented.dtype == torch.float32 and augmented.shape == pixels.shape
    assert augmented.min() >= 0 and augmented.max() <= 255 and torch.equal(augmented, augmented.round())
    assert all(not torch.equal(augmented[i], pixels[i].float()) for i in range(len(pixels)))
    # a shift alone moves each image by its own whole number of pixels, black coming in
    torch.manual_seed(2)
    shifted = build_augment(rotation=0, translate=0.05, zoom=0)(pixels)
    moves = []
    for i in range(len(pixels)):
        source = pixels[i, 0].float()
        found = [(dy, dx) for dy in range(-11, 12) for dx in range(-11, 12)
                 if torch.equal(shifted[i, 0, 20:200, 20:200], source[20 - dy:200 - dy, 20 - dx:200 - dx])]  # fmt: skip
        assert len(found) == 1, i
        moves.append(found[0])
    assert len(set(moves)) > 1
    flipped = build_augment(rotation=0, translate=0, zoom=0, hflip=True)(pixels.repeat(4, 1, 1, 1))
    outs = [torch.equal(f, p.flip(-1).float()) for f, p in zip(flipped, pixels.repeat(4, 1, 1, 1), strict=True)]
    assert 0 < sum(outs) < len(outs)  # some flipped, some not, each exactly
    assert all(o or torch.equal(f, p.float()) for o, f, p in zip(outs, flipped, pixels.repeat(4, 1, 1, 1), strict=True))
