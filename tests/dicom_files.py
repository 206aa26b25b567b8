"""Build conformant DICOM files in memory for tests (one builder, shared by the io, gate and web tests)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def make_dicom(
    arr: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_bytes: bytes | None = None,
    rows_columns: tuple[int, int] | None = None,
    **tags: object,
) -> bytes:
    """A DICOM file (preamble + DICM + meta header) holding `arr`, or no Pixel Data when `arr` is None.

    Args:
        arr: pixels (2-D grey or 3-D RGB; the dtype sets Bits Allocated and Pixel Representation).
        photometric: Photometric Interpretation.
        bits_stored: Bits Stored when fewer than allocated.
        transfer_syntax: transfer syntax UID; pass compressed `pixel_bytes` with a compressed syntax.
        pixel_bytes: encoded Pixel Data to store instead of `arr.tobytes()` (stored as OB).
        rows_columns: Rows/Columns to claim instead of `arr`'s shape.
        **tags: further header elements by keyword (`SOPClassUID` overrides the default DX storage class).

    Returns:
        The file's bytes.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.pop("SOPClassUID", DX_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if arr is not None:
        rows, columns = rows_columns or arr.shape[:2]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1 if arr.ndim == 2 else 3
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        if arr.ndim == 3:
            ds.PlanarConfiguration = 0
        if pixel_bytes is None:
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
        else:
            ds.PixelData = pixel_bytes
            ds["PixelData"].VR = "OB"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()
