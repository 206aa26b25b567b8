"""Exceptions raised by the `xray` package.

Every message says what was wrong and what is accepted, so the app can show it to a doctor as is.
"""


class XrayError(Exception):
    """Base class for every error the `xray` package raises on purpose."""


class ImageReadError(XrayError, ValueError):
    """The uploaded file cannot be turned into chest X-ray pixels."""


class EmptyFileError(ImageReadError):
    """The file has no bytes."""


class TruncatedImageError(ImageReadError):
    """The file ends before the image data does."""


class NotAnImageError(ImageReadError):
    """The bytes are not a supported image or DICOM file."""


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class ZeroSizeImageError(ImageReadError):
    """The image has no rows or no columns."""


class MultiFrameDicomError(ImageReadError):
    """The DICOM file holds several frames (a CT/MR series or cine), not one radiograph."""


class NoPixelDataError(ImageReadError):
    """The DICOM file has no Pixel Data element (a report, structured report or presentation state)."""


class UnsupportedCompressionError(ImageReadError):
    """The DICOM pixel data uses a transfer syntax that no installed decoder can read."""


class ModelNotFoundError(XrayError, LookupError):
    """A model name could not be resolved to a folder with config.json and weights."""


class ModelConfigError(XrayError, ValueError):
    """A model folder exists but its config.json or weights are unusable."""
