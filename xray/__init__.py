"""Chest X-ray decision support: image reading, timm classifiers, Grad-CAM, per-doctor records.

Decision support only, not a diagnostic device. Importing this package loads nothing heavy.
"""

__version__ = "0.1.0"
