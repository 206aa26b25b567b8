"""Tests for xray.imaging.io: real chest X-rays from ../shared/data and generated edge cases (raster and DICOM)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from tests.dicom_files import DX_STORAGE, make_dicom
from xray.config import get_settings
from xray.errors import (
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    MultiFrameDicomError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedCompressionError,
    ZeroSizeImageError,
)
from xray.imaging.io import IMAGE_EXTENSIONS, PREVIEW_MAX_SIDE, XrayImage, preview, read_image

ACCEPTED = "Accepted files: PNG, JPEG"


# ---------------------------------------------------------------------------------------------------------
# helpers


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gradient16(lo: int = 1000, hi: int = 4095, shape: tuple[int, int] = (64, 256)) -> np.ndarray:
    """A left-to-right ramp of 12-bit values stored in uint16, the case that used to come out black."""
    row = np.linspace(lo, hi, shape[1]).round().astype(np.uint16)
    return np.tile(row, (shape[0], 1))


def expected_stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.rint((values.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def assert_grey(image: XrayImage) -> np.ndarray:
    """Assert the RGB channels are identical and return the grey plane."""
    px = image.pixels
    assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 0], px[..., 2])
    assert image.is_color is False
    return px[..., 0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming a size, with no pixel data: only a header-first size check can reject it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------------
# real chest X-rays


def test_kermany_224_rgb_jpegs_are_grey_and_exact(shared_data: Path) -> None:
    paths = sorted((shared_data / "kermany-224" / "test" / "NORMAL").glob("*.jpeg"))[:4]
    paths += sorted((shared_data / "kermany-224" / "test" / "PNEUMONIA").glob("*.jpeg"))[:4]
    assert len(paths) == 8
    for path in paths:
        image = read_image(path)
        reference = np.asarray(Image.open(path).convert("RGB"))
        assert image.source_format == "JPEG" and image.original_mode == "RGB" and image.bit_depth == 8
        assert image.size == (224, 224)
        assert np.array_equal(image.pixels, reference)
        assert_grey(image)  # stored as RGB, but a grey radiograph: must not count as colour
        assert image.metadata == {}


def test_fullres_kermany_jpegs_match_pillow(kermany_fullres: list[Path]) -> None:
    assert len(kermany_fullres) == 16
    for path in kermany_fullres:
        image = read_image(path)
        with Image.open(path) as ref:
            assert image.size == ref.size
            grey = assert_grey(image)
            assert np.array_equal(grey, np.asarray(ref.convert("L")))
        assert image.original_mode == "L"
        assert min(image.size) >= 500


def test_bytes_and_path_give_the_same_image(kermany_fullres: list[Path]) -> None:
    path = kermany_fullres[0]
    from_path = read_image(path)
    from_bytes = read_image(path.read_bytes(), filename=path.name)
    assert np.array_equal(from_path.pixels, from_bytes.pixels)
    assert from_path.pixels.flags.writeable is False  # shared, read-only result


def test_covid_chestxray_jpeg(shared_data: Path) -> None:
    paths = sorted((shared_data / "covid-chestxray" / "images").glob("*.jp*g"))[:5]
    assert paths
    for path in paths:
        image = read_image(path)
        with Image.open(path) as ref:
            assert image.size == ref.size
        assert image.source_format == "JPEG"
        assert image.is_color is False


def test_colour_photograph_is_colour() -> None:
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib sample photograph not installed")
    image = read_image(photo)
    assert image.is_color is True
    assert image.size == (512, 600)


# ---------------------------------------------------------------------------------------------------------
# generated raster images


def test_image_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"} <= IMAGE_EXTENSIONS


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey_with_12bit_range_keeps_contrast(fmt: str) -> None:
    values = gradient16(1000, 4095)
    values[0, 0] = 1000  # ramp start
    image = read_image(encode(Image.fromarray(values), fmt), filename=f"ramp.{fmt.lower()}")
    grey = assert_grey(image)
    assert image.bit_depth == 16 and image.original_mode.startswith("I;16")
    # Stretched from the data's own range: neither black nor white, full 0..255, order kept.
    assert grey.min() == 0 and grey.max() == 255
    assert len(np.unique(grey)) > 200
    assert np.all(np.diff(grey[0].astype(int)) >= 0)
    assert np.array_equal(grey, expected_stretch(values))


def test_8bit_grey_png_is_not_stretched() -> None:
    values = np.tile(np.arange(50, 101, dtype=np.uint8), (10, 1))
    image = read_image(encode(Image.fromarray(values), "PNG"))
    assert np.array_equal(assert_grey(image), values)
    assert image.original_mode == "L" and image.source_format == "PNG"


def test_rgb_colour_png_is_exact_and_colour() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    image = read_image(encode(Image.fromarray(rgb), "PNG"))
    assert np.array_equal(image.pixels, rgb)
    assert image.size == (30, 40)
    assert image.is_color is True


def test_grey_saved_as_rgb_with_small_annotation_is_not_colour() -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[5:15, 5:40] = (255, 0, 0)  # a red marker: under 1% of the image
    assert read_image(encode(Image.fromarray(rgb), "PNG")).is_color is False
    # Lossy JPEG of a grey image stored as RGB: chroma noise only.
    assert read_image(encode(Image.fromarray(np.stack([grey] * 3, -1)), "JPEG", quality=70)).is_color is False


def test_rgba_is_composited_onto_black() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
    image = read_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert image.original_mode == "RGBA"
    assert image.pixels[0, 0].tolist() == [0, 0, 0]
    assert image.pixels[0, 1].tolist() == [200, 100, 50]
    assert np.abs(image.pixels[0, 2].astype(int) - [100, 50, 25]).max() <= 1


def test_grey_alpha_png_is_composited_onto_black() -> None:
    la = Image.merge("LA", (Image.new("L", (4, 4), 180), Image.new("L", (4, 4), 0)))
    la.putpixel((1, 1), (180, 255))
    image = read_image(encode(la, "PNG"))
    grey = assert_grey(image)
    assert grey[1, 1] == 180 and grey[0, 0] == 0 and grey.sum() == 180


def test_palette_png() -> None:
    pal = Image.new("P", (4, 2))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.putdata([0, 1, 2, 1, 1, 2, 0, 1])
    image = read_image(encode(pal, "PNG"))
    assert image.original_mode == "P" and image.is_color is True
    assert image.pixels[0, 1].tolist() == [255, 0, 0] and image.pixels[0, 2].tolist() == [0, 0, 255]
    # A grey palette is not colour; a transparent palette index becomes black.
    grey_pal = Image.new("P", (4, 2))
    grey_pal.putpalette([v for i in range(256) for v in (i, i, i)])
    grey_pal.putdata([10, 200, 200, 30, 40, 50, 60, 70])
    grey_pal.info["transparency"] = 200
    image = read_image(encode(grey_pal, "PNG", transparency=200))
    grey = assert_grey(image)
    assert grey[0].tolist() == [10, 0, 0, 30] and grey[1].tolist() == [40, 50, 60, 70]


def test_bmp_and_8bit_tiff_are_exact() -> None:
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    for fmt in ("BMP", "TIFF"):
        image = read_image(encode(Image.fromarray(grey), fmt), filename=f"x.{fmt.lower()}")
        assert image.source_format == fmt
        assert np.array_equal(assert_grey(image), grey)
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    assert np.array_equal(read_image(encode(Image.fromarray(rgb), "BMP")).pixels, rgb)


def test_webp_lossless_and_lossy_rgba() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    image = read_image(encode(Image.fromarray(rgb), "WEBP", lossless=True))
    assert image.source_format == "WEBP" and np.array_equal(image.pixels, rgb)
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = 220
    rgba[:, 16:, 3] = 255  # left half transparent
    image = read_image(encode(Image.fromarray(rgba, "RGBA"), "WEBP", quality=90))
    grey = assert_grey(image)
    assert grey[:, :12].max() <= 10 and grey[:, 20:].min() >= 200


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    # Stored 60 wide x 40 high with a bright top-left block; orientation 6 = rotate 90 degrees clockwise.
    stored = np.zeros((40, 60), dtype=np.uint8)
    stored[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    image = read_image(encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (40, 60)  # width and height swapped
    grey = assert_grey(image)
    assert grey[:10, -10:].mean() > 200  # the block moved to the top-right corner
    assert grey[:10, :10].mean() < 50


# ---------------------------------------------------------------------------------------------------------
# bad raster input: specific exception, message says what is wrong and what is accepted


def test_empty_file() -> None:
    with pytest.raises(EmptyFileError, match=rf"'scan.png' is empty \(0 bytes\).*{ACCEPTED}"):
        read_image(b"", filename="scan.png")


def test_empty_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "upload.jpg"
    path.write_bytes(b"")
    with pytest.raises(EmptyFileError, match="'upload.jpg' is empty"):
        read_image(path)


def test_truncated_real_jpeg(kermany_fullres: list[Path]) -> None:
    data = kermany_fullres[0].read_bytes()
    with pytest.raises(TruncatedImageError, match=rf"is a JPEG image of \d+ x \d+ pixels.*truncated.*{ACCEPTED}"):
        read_image(data[: len(data) // 2], filename="cut.jpeg")


def test_truncated_png() -> None:
    rng = np.random.default_rng(4)
    data = encode(Image.fromarray(rng.integers(0, 256, (100, 100), dtype=np.uint8)), "PNG")
    with pytest.raises(TruncatedImageError, match=r"'cut.png' is a PNG image of 100 x 100 pixels.*truncated"):
        read_image(data[: len(data) // 2], filename="cut.png")
    with pytest.raises(TruncatedImageError, match=r"starts like a PNG image but cannot be read.*truncated"):
        read_image(data[:30], filename="cut.png")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Patient: Doe\nFindings: none\n" * 10, "is a text file, not an image"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "is a PDF document"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "is a GIF image, which is not accepted"),
        (b"PK\x03\x04\x14\x00\x00\x00", "is a ZIP archive"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "is a HEIC/HEIF/AVIF photo"),
        (bytes(range(256)) * 4, "is not an image in a supported format"),
    ],
)
def test_not_an_image(data: bytes, expected: str) -> None:
    with pytest.raises(NotAnImageError, match=rf"'file.bin' {expected}.*{ACCEPTED}"):
        read_image(data, filename="file.bin")


def test_text_file_on_disk_named_like_dicom(tmp_path: Path) -> None:
    path = tmp_path / "report.dcm"
    path.write_text("Chest X-ray report: no findings.\n" * 5, encoding="utf-8")
    expected = rf"'report.dcm' has a DICOM file name but is not a DICOM file.*{ACCEPTED}"
    with pytest.raises(NotAnImageError, match=expected):
        read_image(path)


def test_zero_size_png() -> None:
    with pytest.raises(ZeroSizeImageError, match=rf"'empty.png' is a PNG image with no pixels \(0 x 10\).*{ACCEPTED}"):
        read_image(png_header_only(0, 10), filename="empty.png")


def test_image_over_max_pixels_is_refused_with_sizes() -> None:
    data = encode(Image.new("L", (100, 80), 128), "PNG")
    expected = r"'big.png' is 100 x 80 pixels \(8,000 pixels\); the limit is 5,000 pixels"
    with pytest.raises(ImageTooLargeError, match=expected):
        read_image(data, filename="big.png", max_pixels=5000)
    assert read_image(data, max_pixels=8000).size == (100, 80)  # exactly at the limit is fine


def test_size_is_checked_from_the_header_before_decoding() -> None:
    # No pixel data at all: decoding would fail as truncated, so ImageTooLargeError proves the order.
    with pytest.raises(ImageTooLargeError, match=r"is 5000 x 4000 pixels \(20.0 megapixels\); the limit is 1.0"):
        read_image(png_header_only(5000, 4000), max_pixels=1_000_000)
    # A decompression bomb far beyond Pillow's own guard is refused too, without decoding.
    with pytest.raises(ImageTooLargeError, match=r"is 50000 x 50000 pixels \(2500.0 megapixels\)"):
        read_image(png_header_only(50_000, 50_000))


def test_default_limit_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("L", (100, 100), 128), "PNG")
    monkeypatch.setenv("XRAY_MAX_IMAGE_PIXELS", "5000")
    get_settings.cache_clear()
    try:
        with pytest.raises(ImageTooLargeError, match="the limit is 5,000 pixels.*XRAY_MAX_IMAGE_PIXELS"):
            read_image(data)
    finally:
        monkeypatch.delenv("XRAY_MAX_IMAGE_PIXELS")
        get_settings.cache_clear()
    assert read_image(data).size == (100, 100)


def test_every_read_error_is_an_image_read_error() -> None:
    for exc in (EmptyFileError, TruncatedImageError, NotAnImageError, ImageTooLargeError, ZeroSizeImageError,
                MultiFrameDicomError, NoPixelDataError, UnsupportedCompressionError):
        assert issubclass(exc, ImageReadError) and issubclass(exc, ValueError)


# ---------------------------------------------------------------------------------------------------------
# DICOM


PATIENT_TAGS = {
    "PatientName": "Doe^Jane^M",
    "PatientID": " 12345 ",
    "StudyDate": "20240131",
    "Modality": "DX",
    "ViewPosition": "PA",
    "BodyPartExamined": "CHEST",
    "PatientBirthDate": "19800101",  # not requested: must not be returned
}


def test_dicom_monochrome2_pixels_and_metadata() -> None:
    values = gradient16(100, 3000)
    image = read_image(make_dicom(values, bits_stored=12, **PATIENT_TAGS), filename="chest.dcm")
    assert image.source_format == "DICOM" and image.original_mode == "MONOCHROME2"
    assert image.bit_depth == 12 and image.inverted is False
    assert image.metadata == {
        "PatientName": "Doe, Jane M",
        "PatientID": "12345",
        "StudyDate": "2024-01-31",
        "Modality": "DX",
        "ViewPosition": "PA",
        "BodyPartExamined": "CHEST",
    }
    grey = assert_grey(image)
    # No VOI in the file: the full data range is stretched onto 0..255.
    assert np.array_equal(grey, expected_stretch(values))
    assert image.pixels.flags.writeable is False


def test_dicom_metadata_only_present_tags_and_bad_date_dropped() -> None:
    values = gradient16(0, 255).astype(np.uint8)
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):  # pydicom's own validation, on writing
        data = make_dicom(values, PatientID="A-7", StudyDate="20241345", Modality="CR")
    image = read_image(data)
    assert image.metadata == {"PatientID": "A-7", "Modality": "CR"}


def test_dicom_monochrome1_is_inverted() -> None:
    values = gradient16(100, 3000)
    mono2 = assert_grey(read_image(make_dicom(values, bits_stored=12)))
    image = read_image(make_dicom(values, photometric="MONOCHROME1", bits_stored=12))
    mono1 = assert_grey(image)
    assert image.inverted is True and image.original_mode == "MONOCHROME1"
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0  # lowest stored value (bone, in MONOCHROME1) is bright


def test_dicom_rescale_and_window() -> None:
    # CT-like: signed stored values, HU = stored - 1024, soft-tissue window 40/400 -> [-160, 240] HU.
    hu = np.array([[-1000, -500, -160, -100, 40], [100, 200, 240, 500, 3000]], dtype=np.int16)
    stored = (hu + 1024).astype(np.int16)
    data = make_dicom(
        stored, RescaleSlope="1", RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400", Modality="CT"
    )
    grey = assert_grey(read_image(data))
    assert grey[0, :3].tolist() == [0, 0, 0]  # at or below the window's lower edge
    assert grey[1, 3:].tolist() == [255, 255]  # above the window
    expected_mid = ((40 - 39.5) / 399 + 0.5) * 255  # DICOM LINEAR windowing formula at the centre
    assert abs(int(grey[0, 4]) - expected_mid) <= 1
    assert np.all(np.diff(grey.ravel().astype(int)) >= 0)  # order kept


def test_dicom_rescale_slope_without_window_uses_full_range() -> None:
    stored = gradient16(0, 2000)
    image = read_image(make_dicom(stored, RescaleSlope="0.5", RescaleIntercept="-100"))
    assert np.array_equal(assert_grey(image), expected_stretch(stored))


def test_dicom_voi_lut_sequence() -> None:
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))
    lut = (np.sqrt(np.arange(4096) / 4095) * 1000).astype(np.uint16)  # a curve, output range 0..1000
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = lut.astype("<u2").tobytes()  # OW, as most modalities write it
    data = make_dicom(stored, bits_stored=12, VOILUTSequence=pydicom.Sequence([item]))
    grey = assert_grey(read_image(data))
    expected = np.rint(lut[stored].astype(np.float64) * 255 / 1000).astype(np.uint8)
    assert np.array_equal(grey, expected)


def test_dicom_detected_by_magic_without_extension(tmp_path: Path) -> None:
    values = gradient16(0, 4095)
    data = make_dicom(values, bits_stored=12, PatientID="XYZ")
    path = tmp_path / "gradio_upload_tmp3f9a"  # temp name, no extension
    path.write_bytes(data)
    for image in (read_image(path), read_image(data), read_image(data, filename="scan.png")):
        assert image.source_format == "DICOM"
        assert image.metadata == {"PatientID": "XYZ"}


def test_dicom_without_preamble_needs_the_extension() -> None:
    ds = Dataset()
    ds.SOPClassUID = DX_STORAGE
    ds.Rows, ds.Columns = 2, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)  # bare dataset: no preamble, no DICM
    image = read_image(buf.getvalue(), filename="old.dcm")
    assert assert_grey(image).tolist() == [[0, 51, 102], [153, 204, 255]]
    with pytest.raises(NotAnImageError, match="not an image in a supported format"):
        read_image(buf.getvalue(), filename="old.bin")


def test_png_named_dcm_is_read_as_png() -> None:
    data = encode(Image.new("L", (5, 4), 77), "PNG")
    image = read_image(data, filename="misnamed.dcm")
    assert image.source_format == "PNG" and image.size == (5, 4)


def test_dicom_multiframe_is_refused() -> None:
    frames = np.zeros((3, 8, 8), dtype=np.uint16)
    data = make_dicom(frames[0], pixel_bytes=None, NumberOfFrames=3, Modality="CT")
    # make_dicom wrote one frame; replace with three so the file is consistent.
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = frames.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(MultiFrameDicomError, match=rf"multi-frame DICOM \(3 frames, CT\).*single-frame.*{ACCEPTED}"):
        read_image(buf.getvalue(), filename="series.dcm")


def test_dicom_without_pixel_data() -> None:
    data = make_dicom(None, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", Modality="SR", PatientID="1")
    expected = rf"'report.dcm' is a DICOM file without an image \(no Pixel Data; it is a Basic Text SR.*{ACCEPTED}"
    with pytest.raises(NoPixelDataError, match=expected):
        read_image(data, filename="report.dcm")


def test_dicom_zero_rows() -> None:
    data = make_dicom(np.zeros((4, 4), dtype=np.uint8), rows_columns=(0, 4))
    with pytest.raises(ZeroSizeImageError, match=rf"has no pixels \(4 x 0\).*{ACCEPTED}"):
        read_image(data, filename="zero.dcm")


def test_dicom_too_large_checked_before_decoding() -> None:
    # The header claims 3000 x 3000 but only 16 pixels are stored: decoding would fail as truncated.
    data = make_dicom(np.zeros((4, 4), dtype=np.uint16), rows_columns=(3000, 3000))
    with pytest.raises(ImageTooLargeError, match=r"is 3000 x 3000 pixels \(9.0 megapixels\); the limit is 1.0"):
        read_image(data, max_pixels=1_000_000)
    with pytest.raises(TruncatedImageError, match=r"pixel data cannot be read.*truncated"):
        read_image(data, max_pixels=10_000_000)


def test_dicom_jpeg_baseline_decodes(kermany_fullres: list[Path]) -> None:
    jpeg = kermany_fullres[0].read_bytes()
    with Image.open(io.BytesIO(jpeg)) as ref:
        reference = np.asarray(ref.convert("L"))
    data = make_dicom(reference, transfer_syntax=JPEGBaseline8Bit, pixel_bytes=encapsulate([jpeg]))
    image = read_image(data, filename="jpeg.dcm")
    grey = assert_grey(image)
    assert image.size == (reference.shape[1], reference.shape[0])
    # Different JPEG decoders may differ by a level or two; the full-range stretch applies to both.
    diff = np.abs(grey.astype(int) - expected_stretch(reference).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_dicom_ybr_jpeg_of_a_grey_radiograph(shared_data: Path) -> None:
    # Kermany-224 files are RGB JPEGs (YCbCr inside), as a colour DICOM export would store them.
    path = sorted((shared_data / "kermany-224" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    reference = np.asarray(Image.open(path).convert("RGB"))
    encapsulated = encapsulate([path.read_bytes()])
    data = make_dicom(reference, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit, pixel_bytes=encapsulated)
    image = read_image(data)
    assert image.original_mode == "YBR_FULL_422" and image.size == (224, 224)
    assert np.abs(image.pixels.astype(int) - reference).max() <= 2
    assert image.is_color is False


@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, RLELossless])
def test_dicom_lossless_compressed_16bit_matches_uncompressed(transfer_syntax: str) -> None:
    values = gradient16(100, 3000)
    values[::7] = 50
    plain = make_dicom(values, bits_stored=12, WindowCenter="1500", WindowWidth="2000")
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.compress(transfer_syntax)  # pydicom's own encoders (pylibjpeg-openjpeg, RLE)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    image = read_image(buf.getvalue(), filename="compressed.dcm")
    assert np.array_equal(image.pixels, read_image(plain).pixels)
    assert image.bit_depth == 12


@pytest.mark.parametrize(
    ("uid", "named"),
    [
        ("1.2.3.4.5.6.7", r"'1\.2\.3\.4\.5\.6\.7' \(not a known transfer syntax\)"),
        ("1.2.840.10008.1.2.4.100", "'MPEG2 Main Profile"),
    ],
)
def test_dicom_unsupported_transfer_syntax(uid: str, named: str) -> None:
    jpeg = encode(Image.new("L", (8, 8), 100), "JPEG")
    data = make_dicom(np.zeros((8, 8), dtype=np.uint8), transfer_syntax=uid, pixel_bytes=encapsulate([jpeg]))
    expected = rf"transfer syntax {named}.*no installed decoder.*{ACCEPTED}"
    with pytest.raises(UnsupportedCompressionError, match=expected):
        read_image(data, filename="odd.dcm")


def test_dicom_damaged_compressed_data() -> None:
    broken = encapsulate([b"\xff\xd8garbage"])
    data = make_dicom(np.zeros((8, 8), dtype=np.uint8), transfer_syntax=JPEGBaseline8Bit, pixel_bytes=broken)
    with pytest.raises(UnsupportedCompressionError, match=r"'JPEG Baseline \(Process 1\)'.*cannot be decoded.*damaged"):
        read_image(data, filename="broken.dcm")


def test_dicom_rgb() -> None:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    image = read_image(make_dicom(rgb, photometric="RGB"))
    assert np.array_equal(image.pixels, rgb) and image.is_color is True and image.original_mode == "RGB"


# ---------------------------------------------------------------------------------------------------------
# The single grey channel and the preview every check of one upload shares


def test_grey_file_keeps_its_decoded_channel_and_preview_is_reduced_once(kermany_fullres: list[Path]) -> None:
    image = read_image(kermany_fullres[0])
    assert image.original_mode == "L" and max(image.size) > PREVIEW_MAX_SIDE
    grey = image.grey()
    assert grey is not None and grey.shape == image.pixels.shape[:2] and grey.flags.writeable is False
    assert np.array_equal(grey, image.pixels[..., 0])
    small = image.preview()
    assert small.ndim == 2 and max(small.shape) == PREVIEW_MAX_SIDE
    assert small.shape == (round(image.size[1] * PREVIEW_MAX_SIDE / image.size[0]), PREVIEW_MAX_SIDE)
    assert image.preview() is small  # computed once, shared by the checks
    # the same reduction as the function used for arrays, so an array and its XrayImage give the same checks
    assert np.array_equal(small, preview(image.pixels)[..., 0])
    assert abs(float(small.mean()) - float(grey.mean())) < 1.0  # area averaging keeps the brightness


def test_grey_stored_as_rgb_is_found_once_and_colour_has_no_grey_channel(kermany_fullres: list[Path]) -> None:
    grey = read_image(kermany_fullres[0]).pixels[..., 0]
    as_rgb = read_image(encode(Image.fromarray(np.stack([grey] * 3, axis=-1)), "PNG"))
    assert as_rgb.original_mode == "RGB" and np.array_equal(as_rgb.grey(), grey)
    colour = np.array(np.stack([grey] * 3, axis=-1))
    colour[..., 0] = 255 - colour[..., 0]
    photo = read_image(encode(Image.fromarray(colour), "PNG"))
    assert photo.grey() is None
    assert photo.preview().shape[2] == 3 and max(photo.preview().shape[:2]) == PREVIEW_MAX_SIDE


def test_small_image_preview_is_the_image_itself() -> None:
    pixels = np.tile(np.arange(200, dtype=np.uint8), (300, 1))
    image = read_image(encode(Image.fromarray(pixels), "PNG"))
    assert np.array_equal(image.preview(), pixels) and image.preview().shape == (300, 200)


def test_dicom_grey_channel_is_the_decoded_one() -> None:
    image = read_image(make_dicom(gradient16(100, 3000), bits_stored=12), filename="chest.dcm")
    assert np.array_equal(image.grey(), image.pixels[..., 0])
    assert image.grey().flags.writeable is False
