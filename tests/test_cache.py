"""The pixel cache on real chest X-rays: decoded once, read back on a hit, rebuilt when the data or size change."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from xray.training.cache import cached_pixels, pixel_cache_key
from xray.training.data import Sample, load_pixels, load_samples


@pytest.fixture()
def images(shared_data, tmp_path):
    """Six real X-rays copied to a folder the test may change: 4 Kermany 224-px, 2 full-resolution."""
    kermany = sorted((shared_data / "kermany-224" / "train" / "NORMAL").glob("*.jpeg"))[:2]
    kermany += sorted((shared_data / "kermany-224" / "train" / "PNEUMONIA").glob("*.jpeg"))[:2]
    full = sorted((shared_data / "kermany-val-fullres" / "NORMAL").glob("*.jpeg"))[:2]
    folder = tmp_path / "data"
    folder.mkdir()
    samples = []
    for path in kermany + full:
        copy = folder / path.name
        shutil.copy2(path, copy)
        samples.append(Sample(copy, "PNEUMONIA" if "person" in path.name else "NORMAL", path.stem))
    return samples


def test_a_miss_decodes_and_stores_then_a_hit_reads_the_same_pixels(images, tmp_path):
    cache_dir = tmp_path / "cache"
    first = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir)
    assert not first.hit and first.path.parent == cache_dir and first.path.is_file()
    assert first.pixels.dtype == torch.uint8 and tuple(first.pixels.shape) == (6, 1, 224, 224)  # grey: one channel
    again = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir)
    assert again.hit and again.path == first.path and torch.equal(again.pixels, first.pixels)
    # exactly what train.py decoded into memory before the cache (the transform's own resize)
    for cached, decoded in zip(again.arrays(), load_pixels(images, (224, 224), "bicubic"), strict=True):
        assert cached.shape == decoded.shape == (224, 224) and np.array_equal(cached, decoded)
    assert sorted(p.name for p in cache_dir.iterdir()) == [first.path.name]  # no temporary file left


def test_changed_data_or_resolution_misses(images, tmp_path):
    cache_dir = tmp_path / "cache"
    base = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir)
    # another resolution, another interpolation: new files, the right size
    small = cached_pixels(images, (160, 128), "bicubic", cache_dir=cache_dir)
    assert not small.hit and small.key != base.key and tuple(small.pixels.shape[2:]) == (160, 128)
    assert cached_pixels(images, (224, 224), "bilinear", cache_dir=cache_dir).key != base.key
    # fewer images, or the same images in another order
    assert not cached_pixels(images[:5], (224, 224), "bicubic", cache_dir=cache_dir).hit
    assert pixel_cache_key(images[::-1], (224, 224), "bicubic") != base.key
    # a file replaced under the same name: the new image's pixels, not the cached ones
    target = images[0].source
    shutil.copy2(images[1].source, target)
    os.utime(target, ns=(os.stat(target).st_atime_ns, os.stat(target).st_mtime_ns + 10**9))
    replaced = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir)
    assert not replaced.hit and replaced.key != base.key
    assert torch.equal(replaced.pixels[0], base.pixels[1]) and not torch.equal(replaced.pixels[0], base.pixels[0])
    # only touching a file (same bytes, new time) also misses: the hash cannot know the bytes are unchanged
    os.utime(images[2].source, ns=(0, 10**18))
    assert not cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir).hit


def test_a_damaged_file_is_rebuilt(images, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    first = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir)
    first.path.write_bytes(b"not a torch file")
    rebuilt = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir)
    assert not rebuilt.hit and torch.equal(rebuilt.pixels, first.pixels)
    assert "unreadable" in caplog.text
    assert cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir).hit


def test_no_store_and_in_memory_samples_write_nothing(images, tmp_path):
    cache_dir = tmp_path / "cache"
    loose = cached_pixels(images, (224, 224), "bicubic", cache_dir=cache_dir, store=False)
    assert loose.path is None and not cache_dir.exists()
    grey = np.full((300, 200), 90, dtype=np.uint8)
    in_memory = [Sample(grey, "NORMAL", "a")]
    assert pixel_cache_key(in_memory, (224, 224), "bicubic") is None
    assert cached_pixels(in_memory, (224, 224), "bicubic", cache_dir=cache_dir).path is None
    assert not cache_dir.exists()


def test_a_colour_image_gives_three_channels_and_evaluates_alike(images, tmp_path):
    from xray.imaging.transforms import build_transform

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (250, 300, 3), dtype=np.uint8)
    from PIL import Image

    path = tmp_path / "colour.png"
    Image.fromarray(colour).save(path)
    samples = images[:2] + [Sample(path, "NORMAL", "c")]
    cache = cached_pixels(samples, (224, 224), "bicubic", cache_dir=tmp_path / "cache")
    assert tuple(cache.pixels.shape) == (3, 3, 224, 224)
    config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
              "std": (0.229, 0.224, 0.225)}  # fmt: skip
    evaluate = build_transform(config)
    for cached, decoded in zip(cache.arrays(), load_pixels(samples, (224, 224), "bicubic"), strict=True):
        assert torch.equal(evaluate(cached), evaluate(decoded))  # a grey image stored as RGB is still grey


def test_the_training_splits_of_a_real_source_hit_on_the_second_run(shared_data, tmp_path):
    samples = [s for s in load_samples(shared_data / "covid-chestxray")][:12]  # up to 512 px, grey JPEGs
    first = cached_pixels(samples, (224, 224), "bilinear", cache_dir=tmp_path)
    second = cached_pixels(list(samples), (224, 224), "bilinear", cache_dir=tmp_path)
    assert not first.hit and second.hit and len(second) == 12


def test_the_input_jpeg_step_is_cached_as_the_evaluation_transform_applies_it(images, tmp_path):
    from xray.imaging.transforms import build_transform

    plain = cached_pixels(images, (224, 224), "bicubic", cache_dir=tmp_path)
    jpeg = cached_pixels(images, (224, 224), "bicubic", cache_dir=tmp_path, jpeg_quality=75)
    assert not jpeg.hit and jpeg.key != plain.key and not torch.equal(jpeg.pixels, plain.pixels)
    assert cached_pixels(images, (224, 224), "bicubic", cache_dir=tmp_path, jpeg_quality=75).hit
    assert not cached_pixels(images, (224, 224), "bicubic", cache_dir=tmp_path, jpeg_quality=50).hit
    config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
              "std": (0.229, 0.224, 0.225)}  # fmt: skip
    with_step, without = build_transform(config, jpeg_quality=75), build_transform(config)
    for cached, decoded in zip(jpeg.arrays(), load_pixels(images, (224, 224), "bicubic"), strict=True):
        assert torch.equal(without(cached), with_step(decoded))  # the upload path's JPEG step, exactly
