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


class PretrainedWeightsError(XrayError, LookupError):
    """ImageNet weights for a backbone are neither reachable on the hub, cached, nor available offline."""


class DatasetError(XrayError, ValueError):
    """Training or evaluation data cannot be read: unknown layout, missing files or unusable labels."""


class UploadTooLargeError(ImageReadError):
    """The uploaded file is larger than the configured limit (settings.max_upload_mb)."""


class InvalidInputError(XrayError, ValueError):
    """A form field (patient, exam date, filter, page, opacity, ...) is missing or malformed."""


class FieldTooLongError(InvalidInputError):
    """A form field is longer than the record can keep; it is refused, never cut (the message gives both lengths)."""


class RecordNotFoundError(XrayError, LookupError):
    """No record with that id belongs to the signed-in doctor (the same answer whether it exists or not)."""


class AccountError(XrayError, ValueError):
    """A doctor account cannot be created, found or changed as asked (bad name, weak password, unknown, ...)."""


class NotSignedInError(XrayError, PermissionError):
    """The request carries no signed-in, active doctor account."""


class OperatingPointError(XrayError, ValueError):
    """An operating point cannot be computed: no or malformed validation ROC, or threshold/prevalence out of 0..1."""


class OodStatsError(XrayError, ValueError):
    """A model folder's out-of-distribution statistics are unreadable or do not match the model's features."""
