"""Shared inputs of the `xray.web` tests: the sample X-rays, a fixed "today", and one call of `diagnose`."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from xray.web import diagnose

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNEUMONIA_JPEG = EXAMPLES / "person1951_bacteria_4882.jpeg"
NORMAL_JPEG = EXAMPLES / "NORMAL2-IM-1438-0001.jpeg"
TODAY = date(2025, 6, 30)
MB = 2**20


def diagnose_upload(session, store, doctor, model, source=PNEUMONIA_JPEG, patient="Jane Roe", **overrides):
    """`xray.web.diagnose.diagnose` with valid form values (patient `patient`, exam 2025-06-01); `overrides` win."""
    args = dict(
        doctor=doctor,
        source=source,
        filename=None,
        patient_name=patient,
        exam_date="2025-06-01",
        model_name=model,
        allowed_models=[model],
        max_upload_bytes=5 * MB,
        max_pixels=50_000_000,
        today=TODAY,
    )
    args.update(overrides)
    return diagnose.diagnose(session, store, **args)


def colour_photo(path: Path) -> Path:
    """A generated colour picture (hue gradients): the input gate calls it out of scope ("colour image")."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:320, 0:400]
    rgb = np.stack([(x * 255 // 399), (y * 255 // 319), 255 - (x * 255 // 399)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path
