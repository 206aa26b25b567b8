"""Imaging: read any chest X-ray file into pixels, and the one preprocessing every model input goes through.

Owns file decoding (`io`: PNG/JPEG/BMP/TIFF/WebP/DICOM, with specific errors and DICOM tags) and the
preprocessing built from a model's data config (`transforms`). Imports only `xray.config` and `xray.errors`;
knows nothing of models, checks, training, records or the web.
"""
