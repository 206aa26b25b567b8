"""Read any supported chest X-ray file (PNG, JPEG, BMP, TIFF, WebP, DICOM) into 8-bit RGB pixels.

One job: bytes in, display-ready pixels out. Every way a file can be unusable raises a specific
`xray.errors.ImageReadError` subclass whose message says what is wrong and what is accepted.

- Raster images are decoded by Pillow, restricted to the accepted formats (so no Ghostscript/EPS and no
  other plugin ever sees an upload). EXIF orientation is applied, transparency is composited onto black,
  and 16-bit or float data is stretched from its actual min..max onto 0..255 so that a 12-bit range stored
  in 16 bits keeps its contrast.
- DICOM is recognised by extension (.dcm/.dicom) or by the `DICM` magic at byte 128, so uploads saved
  under temporary names work. Pixels go through the Modality LUT (rescale slope/intercept), then the VOI
  LUT or window centre/width when the file has one (else its full data range), and MONOCHROME1 is
  inverted so bone is bright. The grey-level transforms are evaluated once per possible stored value
  and applied as a lookup table, which is exact and much faster than float maths on every pixel.
- Image size is checked from the header before any pixel is decoded (decompression-bomb guard).

`XrayImage.grey()` (the single channel of a grey file, kept from decoding) and `XrayImage.preview()` (a copy of
at most 1024 px, reduced once) let every later step of one upload share that work instead of repeating it on the
full-size RGB pixels.

The returned `XrayImage.pixels` array is read-only (decoders hand out immutable buffers and copying them
would cost time on the hot path); copy it before modifying it.
"""

from __future__ import annotations

import io as _io
import logging
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xray.config import get_settings
from xray.errors import (
    EmptyFileError,
    ImageTooLargeError,
    MultiFrameDicomError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedCompressionError,
    ZeroSizeImageError,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}) | DICOM_EXTENSIONS

#: Pillow formats allowed to decode uploads (the JPEG opener also returns multi-picture "MPO" camera files).
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")

#: The DICOM tags returned in `XrayImage.metadata` (when present), to prefill the doctor's form; PatientAge
#: ("045Y") picks the threshold of a model with one per population (`xray.inference.population`).
DICOM_METADATA_TAGS = (
    "PatientName", "PatientID", "StudyDate", "Modality", "ViewPosition", "BodyPartExamined", "PatientAge",
)

#: A pixel counts as coloured when its channels differ by more than this (out of 255); grey JPEGs saved
#: as RGB differ by a few levels at most.
COLOR_TOLERANCE = 12
#: The image counts as colour when more than this fraction of its pixels is coloured, so a small
#: coloured annotation on a grey radiograph does not make it a colour photograph.
COLOR_FRACTION = 0.02

#: Long side of `XrayImage.preview`, the reduced copy that display and whole-image statistics work from.
PREVIEW_MAX_SIDE = 1024

ACCEPTED = "Accepted files: PNG, JPEG, BMP, TIFF or WebP images and single-frame DICOM (.dcm) radiographs."

_DICOM_MAGIC_OFFSET = 128
_EXIF_ORIENTATION = 0x0112
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass
class XrayImage:
    """Pixels ready for the model's transform, plus what the file said about itself.

    Attributes:
        pixels: HxWx3 uint8 RGB, read-only (copy before modifying).
        source_format: "PNG", "JPEG", "BMP", "TIFF", "WEBP", "MPO" or "DICOM".
        metadata: DICOM tags useful to prefill a form (see `DICOM_METADATA_TAGS`), as clean strings;
            StudyDate as YYYY-MM-DD. Empty for other formats.
        is_color: True only when the channels really differ (a colour photograph), not for grey images
            stored as RGB.
        bit_depth: bits per sample in the file (1, 8, 16, 32; DICOM: Bits Stored).
        original_mode: how the file stored its pixels: the Pillow mode (e.g. "L", "I;16", "RGBA", "P") or the
            DICOM Photometric Interpretation (e.g. "MONOCHROME1").
        inverted: True when grey levels were inverted for display (DICOM MONOCHROME1).

    `grey()` and `preview()` are computed at most once per image and kept: every check of one upload shares
    them, so a large upload is reduced once, not once per check.
    """

    pixels: np.ndarray
    source_format: str
    metadata: dict[str, str] = field(default_factory=dict)
    is_color: bool = False
    bit_depth: int = 8
    original_mode: str = "RGB"
    inverted: bool = False
    _cache: dict[str, np.ndarray | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def grey(self) -> np.ndarray | None:
        """The pixels as one HxW uint8 channel when all three channels are identical (a grey file), else None.

        The readers keep the channel they decoded, so this is free for grey PNG, JPEG and DICOM files; for an RGB
        file it is checked once.
        """
        if "grey" not in self._cache:
            pixels = self.pixels
            if pixels.ndim == 2:  # built by hand from a grey array
                self._cache["grey"] = pixels
                return pixels
            first = pixels[:, :, 0]
            same = np.array_equal(first, pixels[:, :, 1]) and np.array_equal(first, pixels[:, :, 2])
            self._cache["grey"] = _readonly(np.ascontiguousarray(first)) if same else None
        return self._cache["grey"]

    def preview(self) -> np.ndarray:
        """A read-only copy with the long side at most `PREVIEW_MAX_SIDE` (area-averaged), made once.

        HxW for grey images (see `grey`), HxWx3 otherwise. The display copy and the image-statistics checks
        (input gate, lung fields) start from it instead of the full-size upload.
        """
        if self._cache.get("preview") is None:
            grey = self.grey()
            self._cache["preview"] = _readonly(shrink(self.pixels if grey is None else grey, PREVIEW_MAX_SIDE))
        return self._cache["preview"]  # type: ignore[return-value]


def _with_grey(image: XrayImage, grey: np.ndarray | None) -> XrayImage:
    """Remember the single channel a reader decoded (see `XrayImage.grey`)."""
    if grey is not None:
        image._cache["grey"] = _readonly(grey)
    return image


def preview(image: Any) -> np.ndarray:
    """`XrayImage.preview` for an XrayImage; the same reduction (not cached) for an HxW / HxWx3 array or PIL image.

    Checks that accept either go through this, so an array and the XrayImage read from it give the same results.
    """
    if isinstance(image, XrayImage):
        return image.preview()
    return shrink(np.asarray(image), PREVIEW_MAX_SIDE)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the long side is at most `max_side` (never up)."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """An HxW or HxWx3 image resized (area-averaged) so its long side is at most `max_side`; as is when it fits."""
    import cv2

    height, width = pixels.shape[:2]
    new_w, new_h = fit_size(width, height, max_side)
    if (new_w, new_h) == (width, height):
        return pixels
    return cv2.resize(np.ascontiguousarray(pixels), (new_w, new_h), interpolation=cv2.INTER_AREA)


def is_dicom(data: bytes, filename: str | None = None) -> bool:
    """Tell whether bytes are DICOM: the `DICM` magic at byte 128, or a .dcm/.dicom file name."""
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    return filename is not None and Path(filename).suffix.lower() in DICOM_EXTENSIONS


def read_image(source: str | Path | bytes, *, filename: str | None = None, max_pixels: int | None = None) -> XrayImage:
    """Read an image or DICOM file, or its bytes, into an `XrayImage`.

    Args:
        source: a path, or the file's bytes (e.g. an upload).
        filename: the original file name, used to recognise `.dcm` files and in error messages; defaults to
            the path's name.
        max_pixels: largest accepted width x height; default `get_settings().max_image_pixels`.

    Returns:
        The image as HxWx3 uint8 RGB with its format, DICOM metadata and colour flag.

    Raises:
        EmptyFileError, TruncatedImageError, NotAnImageError, ImageTooLargeError, ZeroSizeImageError,
        MultiFrameDicomError, NoPixelDataError, UnsupportedCompressionError: the message says what is wrong
        and what is accepted.
        OSError: `source` is a path that cannot be read (e.g. FileNotFoundError).

    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        filename = filename or path.name
        data = path.read_bytes()
    limit = max_pixels if max_pixels is not None else get_settings().max_image_pixels
    label = f"'{filename}'" if filename else "The file"
    if not data:
        raise EmptyFileError(f"{label} is empty (0 bytes); the upload may have failed. Upload it again. {ACCEPTED}")
    has_magic = data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"
    if has_magic:
        return _read_dicom(data, label, limit, forced=False)
    try:
        return _read_raster(data, label, limit)
    except NotAnImageError:
        # A DICOM file without the 128-byte preamble (older or non-conformant writers) has no magic;
        # trust the extension only after Pillow has refused the bytes.
        if is_dicom(data, filename):
            return _read_dicom(data, label, limit, forced=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# Raster images (Pillow)


def _read_raster(data: bytes, label: str, limit: int) -> XrayImage:
    try:
        img = Image.open(_io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow refuses sizes above twice its own global limit (Image.MAX_IMAGE_PIXELS) while parsing the
        # header; report the size when the header says it, else Pillow's own words.
        fmt = _sniff_format(data)
        size = _header_size(data, fmt) if fmt else None
        if size is not None:
            _check_size(size[0], size[1], label, limit)
        raise ImageTooLargeError(
            f"{label} is too large to open safely ({exc}). Downscale the image (a chest X-ray needs at most about "
            f"3000 x 3000 pixels). {ACCEPTED}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise _diagnose_unreadable(data, label) from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a damaged file
        raise TruncatedImageError(
            f"{label} looks like an image but its header cannot be read ({exc}); the file is truncated or "
            f"damaged. Upload the complete original file. {ACCEPTED}"
        ) from exc
    with img:
        fmt = img.format or "unknown"
        width, height = img.size
        _check_size(width, height, label, limit)
        try:
            # Decode now: Pillow decodes lazily, and a truncated file must fail here rather than later.
            img.load()
        except Exception as exc:  # noqa: BLE001 - decoder errors on untrusted bytes: OSError, SyntaxError, ...
            raise TruncatedImageError(
                f"{label} is a {fmt} image of {width} x {height} pixels whose pixel data cannot be decoded "
                f"({exc}); the file is truncated or damaged. Upload the complete original file. {ACCEPTED}"
            ) from exc
        n_frames = getattr(img, "n_frames", 1)
        if n_frames > 1:
            logger.info("%s has %d frames/pages; using the first", label, n_frames)
        img = _apply_exif_orientation(img, label)
        mode = img.mode
        rgb, is_color, grey = _pil_to_rgb(img)
    image = XrayImage(
        pixels=_readonly(rgb),
        source_format=fmt,
        is_color=is_color,
        bit_depth=_PIL_BIT_DEPTH.get(mode, 8),
        original_mode=mode,
    )
    return _with_grey(image, grey)


_PIL_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def _check_size(width: int, height: int, label: str, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise ZeroSizeImageError(f"{label} has no pixels ({width} x {height}). {ACCEPTED}")
    if width * height > limit:
        raise ImageTooLargeError(
            f"{label} is {width} x {height} pixels ({_pixel_count(width * height)}); the limit is "
            f"{_pixel_count(limit)}. Downscale the image (a chest X-ray needs at most about 3000 x 3000 pixels) "
            f"or ask the administrator to raise XRAY_MAX_IMAGE_PIXELS. {ACCEPTED}"
        )


def _pixel_count(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def _apply_exif_orientation(img: Image.Image, label: str) -> Image.Image:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not make the pixels unreadable
        logger.debug("%s: unreadable EXIF, orientation ignored", label, exc_info=True)
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        # Only transpose when needed: exif_transpose copies the image even when nothing changes.
        return ImageOps.exif_transpose(img)
    return img


def _pil_to_rgb(img: Image.Image) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """Convert a loaded Pillow image of any mode to HxWx3 uint8 RGB; say whether it is colour; the grey channel.

    The third item is the HxW uint8 channel for grey modes, None for the others.
    """
    mode = img.mode
    if mode in ("L", "1"):
        gray = np.asarray(img if mode == "L" else img.convert("L"))
        return _gray_to_rgb(gray), False, gray
    if mode in _PIL_BIT_DEPTH:  # 16-bit integer, 32-bit integer or float grey
        gray = _stretch_to_uint8(np.asarray(img))
        return _gray_to_rgb(gray), False, gray
    if mode == "P":
        has_alpha = "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        img = _composite_on_black(img)
    elif mode != "RGB":  # CMYK, YCbCr, LAB, HSV
        img = img.convert("RGB")
    rgb = np.asarray(img)
    return rgb, color_image(rgb), None


def _composite_on_black(img: Image.Image) -> Image.Image:
    """Flatten transparency onto black: transparent margins of exported radiographs are background."""
    rgba = img.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def color_image(rgb: np.ndarray) -> bool:
    """Tell whether an HxWx3 uint8 image really has colour (see `COLOR_TOLERANCE` and `COLOR_FRACTION`).

    A grid sample of about 250k pixels decides, which is exact enough and keeps this under a millisecond.
    """
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    sample = rgb[::step, ::step]
    r, g, b = sample[..., 0], sample[..., 1], sample[..., 2]
    # max >= min per pixel, so the uint8 difference cannot wrap around.
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    coloured = np.count_nonzero(chroma > COLOR_TOLERANCE)
    return bool(coloured > COLOR_FRACTION * chroma.size)


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map grey values linearly from their actual min..max onto 0..255 (16-bit, 32-bit and float data)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        finite = arr[np.isfinite(arr)]
        fill = float(finite.min()) if finite.size else 0.0
        arr = np.nan_to_num(arr, nan=fill, posinf=fill, neginf=fill)
    lo, hi = arr.min(), arr.max()
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        # One lookup per pixel instead of float maths over the whole image.
        lut = _linear_to_uint8(np.arange(int(hi) + 1, dtype=np.float64), float(lo), float(hi))
        return lut[arr]
    return _linear_to_uint8(arr.astype(np.float32), float(lo), float(hi))


def _linear_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map `values` so that lo -> 0 and hi -> 255 (clipped outside); a flat image (hi == lo) becomes black."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values - lo) * (255.0 / (hi - lo))
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.stack((gray, gray, gray), axis=-1)


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


# ---------------------------------------------------------------------------------------------------------
# Diagnosing bytes Pillow cannot identify

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff_format(data: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from a PNG, BMP or JPEG header without Pillow (which refuses zero sizes)."""
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "BMP":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return width, abs(height)
        if fmt == "JPEG":
            return _jpeg_header_size(data)
    except struct.error:
        return None
    return None


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def _jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def _diagnose_unreadable(data: bytes, label: str) -> Exception:
    """Build the most helpful error for bytes that no accepted Pillow format could identify."""
    fmt = _sniff_format(data)
    if fmt is not None:
        size = _header_size(data, fmt)
        if size is not None and (size[0] == 0 or size[1] == 0):
            return ZeroSizeImageError(f"{label} is a {fmt} image with no pixels ({size[0]} x {size[1]}). {ACCEPTED}")
        return TruncatedImageError(
            f"{label} starts like a {fmt} image but cannot be read: the file is truncated or damaged. "
            f"Upload the complete original file. {ACCEPTED}"
        )
    head = data[:16]
    if head.startswith(b"%PDF"):
        what = "a PDF document, not an image; export the X-ray itself as PNG or JPEG, or upload the DICOM file"
    elif head.startswith((b"GIF87a", b"GIF89a")):
        what = "a GIF image, which is not accepted; save it as PNG"
    elif head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"avif"):
        what = "a HEIC/HEIF/AVIF photo (e.g. from a phone camera), which is not accepted; export it as JPEG"
    elif head.startswith(b"PK\x03\x04"):
        what = "a ZIP archive or office document; extract the image and upload it on its own"
    elif head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        what = "a JPEG 2000 image, which is not accepted; save it as PNG (JPEG 2000 inside DICOM is accepted)"
    elif _looks_like_text(data):
        what = "a text file, not an image"
    else:
        what = "not an image in a supported format"
    return NotAnImageError(f"{label} is {what}. {ACCEPTED}")


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        if exc.start < len(head) - 4:
            return False
    return b"\x00" not in head


# ---------------------------------------------------------------------------------------------------------
# DICOM (pydicom; imported on first use so importing this module stays cheap)


def _read_dicom(data: bytes, label: str, limit: int, *, forced: bool) -> XrayImage:
    ds = _parse_dicom(data, label, forced=forced)
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        if forced and "SOPClassUID" not in ds:
            raise NotAnImageError(f"{label} has a DICOM file name but is not a DICOM file or an image. {ACCEPTED}")
        kind = _sop_class_name(ds)
        raise NoPixelDataError(
            f"{label} is a DICOM file without an image (no Pixel Data{'; it is a ' + kind if kind else ''}). "
            f"Upload the DICOM image of the radiograph itself. {ACCEPTED}"
        )
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as exc:
        raise TruncatedImageError(
            f"{label} is a DICOM file with invalid image attributes ({exc}); it is damaged. {ACCEPTED}"
        ) from exc
    if frames > 1:
        modality = _clean(ds.get("Modality")) or "unknown modality"
        raise MultiFrameDicomError(
            f"{label} is a multi-frame DICOM ({frames} frames, {modality}), e.g. a CT/MR series or a cine loop. "
            f"Upload a single-frame radiograph (one chest X-ray image). {ACCEPTED}"
        )
    _check_size(columns, rows, label, limit)
    photometric = str(ds.get("PhotometricInterpretation") or ("MONOCHROME2" if samples == 1 else "RGB"))
    photometric = photometric.strip().upper()
    arr = _decode_dicom_pixels(ds, label)
    inverted = False
    grey = None
    if samples == 1 and photometric != "PALETTE COLOR":
        inverted = photometric == "MONOCHROME1"
        grey = np.ascontiguousarray(_dicom_gray_to_uint8(arr, ds, label, invert=inverted))
        rgb = _gray_to_rgb(grey)
        is_color = False
    else:
        rgb = _dicom_color_to_uint8(arr, ds, photometric, label)
        is_color = color_image(rgb)
    image = XrayImage(
        pixels=_readonly(np.ascontiguousarray(rgb)),
        source_format="DICOM",
        metadata=dicom_metadata(ds),
        is_color=is_color,
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or arr.dtype.itemsize * 8),
        original_mode=photometric,
        inverted=inverted,
    )
    return _with_grey(image, grey)


def _parse_dicom(data: bytes, label: str, *, forced: bool) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=forced)
    except InvalidDicomError as exc:
        raise NotAnImageError(f"{label} is not a valid DICOM file ({exc}). {ACCEPTED}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged bytes
        if forced:
            raise NotAnImageError(f"{label} has a DICOM file name but is not a DICOM file. {ACCEPTED}") from exc
        raise TruncatedImageError(
            f"{label} is a DICOM file that cannot be parsed ({exc}); it is truncated or damaged. "
            f"Upload the complete original file. {ACCEPTED}"
        ) from exc
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        # Files without a meta header (no preamble) still tell how they were encoded.
        implicit, little = ds.original_encoding
        if implicit is not None:
            meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
    return ds


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    name = getattr(uid, "name", "") if uid else ""
    return "" if not name or name == str(uid) else name


def _transfer_syntax(ds: Dataset) -> tuple[str, bool]:
    """Return the transfer syntax as text for messages, and whether it is compressed (unknown ones count)."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None:
        return "'unknown'", False
    if not uid.is_transfer_syntax:
        return f"'{uid}' (not a known transfer syntax)", True
    return f"'{uid.name}' ({uid})", uid.is_compressed


def _decode_dicom_pixels(ds: Dataset, label: str) -> np.ndarray:
    ts_name, compressed = _transfer_syntax(ds)
    fast = _fast_jpeg_decode(ds)
    if fast is not None:
        return fast
    try:
        return ds.pixel_array
    except NotImplementedError as exc:
        raise UnsupportedCompressionError(
            f"{label} uses the DICOM transfer syntax {ts_name}, which no installed decoder supports. "
            f"Export the image uncompressed or as JPEG/JPEG 2000/JPEG-LS/RLE DICOM, or as PNG. {ACCEPTED}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise RuntimeError, ValueError, ...
        if compressed:
            raise UnsupportedCompressionError(
                f"{label} has {ts_name} pixel data that cannot be decoded ({_first_line(exc)}); the data is damaged "
                f"or uses a variant no installed decoder reads. Export the image uncompressed DICOM or PNG. {ACCEPTED}"
            ) from exc
        raise TruncatedImageError(
            f"{label} is a DICOM file whose pixel data cannot be read ({_first_line(exc)}); the file is truncated "
            f"or damaged. Upload the complete original file. {ACCEPTED}"
        ) from exc


def _fast_jpeg_decode(ds: Dataset) -> np.ndarray | None:
    """Decode JPEG Baseline through pydicom's Pillow plugin (libjpeg-turbo), else None.

    pydicom tries gdcm and pylibjpeg first, which take about 5x longer on a 2000 x 2000 radiograph; any failure
    here falls back to the normal plugin order, which also produces the error messages.
    """
    from pydicom.pixels import pixel_array
    from pydicom.uid import JPEGBaseline8Bit

    if ds.file_meta.get("TransferSyntaxUID") != JPEGBaseline8Bit:
        return None
    try:
        return pixel_array(ds, decoding_plugin="pillow")
    except Exception:  # noqa: BLE001 - the general decoder path below reports problems
        logger.debug("Pillow could not decode the JPEG Baseline DICOM; trying the other plugins", exc_info=True)
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dicom_gray_to_uint8(arr: np.ndarray, ds: Dataset, label: str, *, invert: bool) -> np.ndarray:
    """Map stored grey values through Modality LUT, VOI LUT or window (else full range) onto 0..255."""
    if arr.ndim != 2:
        raise TruncatedImageError(f"{label} is a DICOM file with unexpected pixel array shape {arr.shape}. {ACCEPTED}")
    lo, hi = _data_range(arr, ds)
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        # Evaluate the transforms once per possible stored value, then look every pixel up: exact, since the
        # transforms act value by value, and a 65536-entry table costs far less than float maths on 4M pixels.
        if arr.dtype.kind == "u":
            values, index = np.arange(int(arr.max()) + 1, dtype=arr.dtype), arr
        else:
            unsigned = np.dtype(f"u{arr.dtype.itemsize}")
            values, index = np.arange(2 ** (8 * arr.dtype.itemsize), dtype=unsigned).view(arr.dtype), arr.view(unsigned)
        lut = _gray_transform(values, ds, lo, hi, label)
        if invert:
            lut = 255 - lut
        return lut[index]
    out = _gray_transform(arr, ds, lo, hi, label)
    return 255 - out if invert else out


def _data_range(arr: np.ndarray, ds: Dataset) -> tuple[float, float]:
    """Min and max stored value, ignoring the Pixel Padding Value (the fill outside the collimated field)."""
    lo, hi = arr.min(), arr.max()
    pad = ds.get("PixelPaddingValue")
    if isinstance(pad, int) and pad in (lo, hi) and lo != hi:
        rest = arr[arr != pad]
        lo, hi = rest.min(), rest.max()
    return lo.item(), hi.item()


def _gray_transform(values: np.ndarray, ds: Dataset, lo: float, hi: float, label: str) -> np.ndarray:
    """Apply the DICOM grey pipeline to stored `values`; returns uint8 of the same shape."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut

    modality = apply_modality_lut(values, ds)
    if modality.dtype.kind == "f" and np.array_equal(modality, np.rint(modality)):
        # Integer-valued rescale output (slope 1): a VOI LUT indexes by integers, so keep them integers.
        modality = modality.astype(np.int64)
    voi = _voi_kind(ds)
    if voi == "lut":
        try:
            out = apply_voi_lut(modality, ds)
            item = ds.VOILUTSequence[0]
            entries, first = item.LUTDescriptor[0] or 2**16, item.LUTDescriptor[1]
            table = apply_voi(np.arange(first, first + entries), ds)
            return _linear_to_uint8(out.astype(np.float64), float(table.min()), float(table.max()))
        except Exception as exc:  # noqa: BLE001 - a broken VOI LUT should not hide the image; show full range
            logger.warning("%s: VOI LUT unusable (%s); showing the full data range", label, exc)
    elif voi == "window":
        try:
            out = apply_voi_lut(modality, ds)
            # The window's output range: what values far below and far above the window map to. This keeps
            # "below the window is black, above is white" whatever pydicom's output scale is.
            with np.errstate(over="ignore"):
                floor, ceiling = apply_voi_lut(np.array([-1e30, 1e30]), ds)
            return _linear_to_uint8(out, float(floor), float(ceiling))
        except ValueError as exc:
            logger.warning("%s: window unusable (%s); showing the full data range", label, exc)
    # Full range: the modality values the image actually contains, stretched onto 0..255.
    present = modality[(values >= lo) & (values <= hi)]
    if present.size == 0:  # only possible for float data that is all NaN
        return np.zeros(values.shape, dtype=np.uint8)
    return _linear_to_uint8(modality.astype(np.float64), float(present.min()), float(present.max()))


def _voi_kind(ds: Dataset) -> str | None:
    """Which VOI transform pydicom's `apply_voi_lut` will use: "lut" (preferred), "window" or None."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _dicom_color_to_uint8(arr: np.ndarray, ds: Dataset, photometric: str, label: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise TruncatedImageError(f"{label} has DICOM colour pixel data of unexpected shape {arr.shape}. {ACCEPTED}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    bits = 16 if photometric == "PALETTE COLOR" else int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    if arr.dtype.kind in "ui" and bits > 8:
        return (np.clip(arr, 0, None) >> (bits - 8)).astype(np.uint8)
    return _linear_to_uint8(arr.astype(np.float32), 0.0, float(2**bits - 1))


def dicom_metadata(ds: Dataset) -> dict[str, str]:
    """Return the `DICOM_METADATA_TAGS` present in a dataset, as clean strings (StudyDate as YYYY-MM-DD)."""
    metadata: dict[str, str] = {}
    for keyword in DICOM_METADATA_TAGS:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001 - an undecodable value is skipped, not fatal
            logger.debug("unreadable DICOM %s", keyword, exc_info=True)
            continue
        if keyword == "PatientName":
            text = _person_name(value)
        elif keyword == "StudyDate":
            text = _iso_date(_clean(value))
        else:
            text = _clean(value)
        if text:
            metadata[keyword] = text
    return metadata


def _clean(value: Any) -> str:
    if value is None:
        return ""
    text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    return " ".join(_CONTROL_CHARS.sub(" ", text).split())


def _person_name(value: Any) -> str:
    """DICOM `Family^Given^Middle^Prefix^Suffix` as `Family, Given Middle` (prefix/suffix kept around it)."""
    if value is None:
        return ""
    parts = [_clean(p) for p in str(value).split("=")[0].split("^")]
    parts += [""] * (5 - len(parts))
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = f"{family}, {first}" if family and first else family or first
    return f"{name} {suffix}".strip() if suffix else name


def _iso_date(text: str) -> str:
    """DICOM DA `YYYYMMDD` (or the old `YYYY.MM.DD`) as `YYYY-MM-DD`; anything unparsable is dropped."""
    digits = text.replace(".", "").replace("-", "")[:8]
    try:
        return datetime.strptime(digits, "%Y%m%d").date().isoformat()
    except ValueError:
        return ""
