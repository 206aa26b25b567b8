"""Inference: load a classifier and run it - probabilities, penultimate features and Grad-CAM.

Owns model loading and saving (`models`: bundled names, `local-dir:`, `hf-hub:`), the ONNX Runtime feature
extractor (`accel`), batched calibrated prediction and feature extraction (`predict`) and Grad-CAM from the
prediction's own forward pass (`explain`), and the lung segmentation model behind the heat check (`segmentation`:
the same model names, MONAI U-Net). May import `xray.imaging` and the base modules; never the trust
checks, the pipeline, training, records or the web.
"""
