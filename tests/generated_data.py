"""Generated training folders for tests of commands that rebuild a model's split (thresholds, backbones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def children_and_adults(
    data: Path, rng: np.random.Generator, *, adult_source: str, per_class: int, size: int
) -> list[str]:
    """Noise images as a Kermany-like children folder and an adults folder whose metadata.csv names its source.

    Each folder holds `per_class` NORMAL and PNEUMONIA images of `size` px under `train/`, one patient each.

    Returns:
        the two folders, children first (as train.py's `--data` takes them).
    """
    from PIL import Image

    for folder, source in (("kermany-224", None), ("adults", adult_source)):
        rows = ["path,label,source,patient_id,split"]
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(per_class):
                path = data / folder / "train" / label / f"{label}-{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(path)
                rows.append(f"train/{label}/{label}-{i}.png,{label},{source},{source}-{label}-{i},train")
        if source:
            (data / folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return [str(data / "kermany-224"), str(data / "adults")]
