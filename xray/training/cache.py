"""Decoded training pixels, cached on disk once per data set and resolution.

Decoding and resizing a chest X-ray costs more than augmenting it, and every run of a data set decodes the same
files to the same size. `cached_pixels` decodes each image once with `read_pixels` (the app's reader and the
transform's own resize, before normalisation), stores the result as one uint8 tensor under the cache folder, and
memory-maps it back on every later call. The file's name is a hash of the image list (paths, sizes, modification
times) and the resize (height, width, interpolation), so a changed, added or removed image, or another resolution,
is a cache miss that builds a new file; nothing stale can be read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xray.training.data import Sample, read_pixels

logger = logging.getLogger(__name__)

#: Bumped whenever what a cache file holds changes meaning (a new resize, a new layout): old files then miss.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """`pixels/` inside the project's cache folder (`XRAY_CACHE_DIR`, else ~/.cache/xray)."""
    from xray.inference.accel import cache_dir

    return cache_dir() / "pixels"


def pixel_cache_key(samples: Sequence[Sample], size: tuple[int, int], interpolation: str,
                    jpeg_quality: int | None = None) -> str | None:  # fmt: skip
    """Hash naming the cache file of `samples` at `size`; None when a sample is not a file (in-memory datasets).

    Each file's path, size in bytes and modification time (ns) enter the hash: replacing an image changes its
    size or time even when its name stays.
    """
    head = f"v{CACHE_VERSION}|{size[0]}x{size[1]}|{interpolation}|jpeg{jpeg_quality or 0}|{len(samples)}"
    digest = hashlib.sha256(head.encode())
    for sample in samples:
        if not isinstance(sample.source, (str, Path)):
            return None
        path = Path(sample.source).resolve()
        stat = path.stat()
        digest.update(f"\n{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


@dataclass
class PixelCache:
    """The decoded pixels of a sample list, in its order.

    Attributes:
        pixels: uint8 (N, C, H, W); C is 1 when every image is grey, else 3 (grey images repeated).
        key: the hash naming the file, or None when the samples could not be cached (decoded in memory).
        path: the cache file, or None.
        hit: whether the pixels came from an existing file.
    """

    pixels: torch.Tensor
    key: str | None = None
    path: Path | None = None
    hit: bool = False

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def arrays(self) -> list[np.ndarray]:
        """The pixels as `load_pixels` returns them: HxW (one channel) or HxWx3 uint8 arrays (views, no copy)."""
        data = self.pixels.numpy()
        if data.shape[1] == 1:
            return [image[0] for image in data]
        return [image.transpose(1, 2, 0) for image in data]


def _decode(samples: Sequence[Sample], size: tuple[int, int], interpolation: str, progress: bool,
            jpeg_quality: int | None = None) -> torch.Tensor:  # fmt: skip
    from PIL import Image
    from tqdm.auto import tqdm

    from xray.imaging.transforms import jpeg_round_trip

    images = []
    for sample in tqdm(samples, desc="decode", disable=not progress, leave=False):
        image = read_pixels(sample, size, interpolation)
        if jpeg_quality:  # the transform's input JPEG step: after the resize, before any augmentation
            image = np.asarray(jpeg_round_trip(Image.fromarray(image), quality=jpeg_quality))
        images.append(image)
    channels = 3 if any(image.ndim == 3 for image in images) else 1
    out = torch.empty((len(images), channels, *size), dtype=torch.uint8)
    for i, image in enumerate(images):
        tensor = torch.from_numpy(np.require(image, requirements="W"))  # PIL's arrays are read-only
        out[i] = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.unsqueeze(0)  # grey fills every channel
    return out


def cached_pixels(
    samples: Sequence[Sample],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    *,
    cache_dir: Path | None = None,
    store: bool = True,
    jpeg_quality: int | None = None,
    progress: bool = False,
) -> PixelCache:
    """The samples' pixels at `size`, decoded once and kept in `cache_dir` for every later epoch and run.

    Args:
        samples: images to decode, in the order the pixels are returned.
        size: (height, width) of the model's input (its data config).
        interpolation: the data config's interpolation.
        cache_dir: folder of cache files (default `default_cache_dir()`); the file is written atomically, so runs
            sharing the folder never read half a file.
        store: False decodes into memory and neither reads nor writes a cache file.
        jpeg_quality: also pass every resized image through the input JPEG step at this quality
            (`jpeg_round_trip`, config.json `input_jpeg_quality`): training and validation then pay it once. The
            evaluation code wants pixels before that step (its transform applies it), so it leaves this None.
        progress: show a progress bar while decoding.
    """
    size = (int(size[0]), int(size[1]))
    key = pixel_cache_key(samples, size, interpolation, jpeg_quality) if store else None
    if key is None:
        return PixelCache(_decode(samples, size, interpolation, progress, jpeg_quality))
    path = Path(cache_dir or default_cache_dir()) / f"{key}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, mmap=True, weights_only=True)
            pixels = stored["pixels"]
            if stored.get("key") == key and pixels.dtype == torch.uint8 and pixels.shape[0] == len(samples):
                logger.info("pixel cache hit: %d images at %dx%d from %s", len(samples), *size, path)
                return PixelCache(pixels, key, path, hit=True)
        except (RuntimeError, OSError, KeyError, EOFError) as exc:  # a damaged file is rebuilt, never trusted
            logger.warning("pixel cache %s unreadable (%s): decoding again", path, exc)
        logger.warning("pixel cache %s does not match its data: decoding again", path)
    pixels = _decode(samples, size, interpolation, progress, jpeg_quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"key": key, "version": CACHE_VERSION, "size": list(size), "interpolation": interpolation,
                "jpeg_quality": jpeg_quality, "files": [str(s.source) for s in samples], "pixels": pixels},
               tmp)  # fmt: skip
    os.replace(tmp, path)
    logger.info("pixel cache written: %d images at %dx%d to %s (%.0f MB)", len(samples), *size, path,
                path.stat().st_size / 1e6)  # fmt: skip
    return PixelCache(pixels, key, path, hit=False)
