"""Read any supported chest X-ray file (PNG, JPEG, BMP, TIFF, WebP, DICOM) into model-ready pixels.

PLACEHOLDER: minimal PIL-only version; the full reader (DICOM, 16-bit, limits, errors) replaces it.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"})


@dataclass
class XrayImage:
    """Pixels ready for the model's transform, plus what the file said about itself."""

    pixels: np.ndarray  # HxWx3 uint8 RGB
    source_format: str
    metadata: dict[str, str] = field(default_factory=dict)
    is_color: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def read_image(source: str | Path | bytes, *, filename: str | None = None, max_pixels: int | None = None) -> XrayImage:
    """Read an image file or its bytes into an `XrayImage`."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(_io.BytesIO(data)) as img:
        fmt = img.format or "unknown"
        img = ImageOps.exif_transpose(img).convert("RGB")
        return XrayImage(pixels=np.asarray(img), source_format=fmt)
