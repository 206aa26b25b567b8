"""Labelled chest X-ray datasets for training and evaluation, and patient-grouped splits.

Accepted sources (never a hard-coded path):
- an image folder with one sub-folder per class, optionally under `train/` and `test/` (`test/` is then the
  official test split, as in Kermany's data set);
- a CSV file of `path,label[,group]` rows (a header row is optional; paths relative to the CSV's folder);
- a covid-chestxray folder (Cohen et al.; `metadata.csv` with `patientid`, `finding`, `filename`);
- a class-per-folder tree with a `metadata.csv` of `path,label,source,patient_id[,split]` (adult-cxr: several
  hospitals in one folder; each image's data source and patient come from the file);
- a Hugging Face dataset id, loaded with `datasets` (an image column and a ClassLabel column).

Every sample carries a `group` (the patient when known) so that no patient is on both sides of a split, and a
`data_source` (hospital or collection: `kermany-224`, `covid-chestxray`, `rsna`, `nih`, ...) so that validation
holds every data source, training can keep a small source from being drowned by a large one, and evaluation can
report every figure per source.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xray.errors import DatasetError

logger = logging.getLogger(__name__)

TRAIN, VAL, TEST = "train", "val", "test"
#: Conventional class order: the negative class first, so a binary model's positive class is label_names[1].
PREFERRED_ORDER = ("NORMAL", "PNEUMONIA", "COVID-19")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"}


@dataclass
class Sample:
    """One labelled image.

    Attributes:
        source: a file path, or an in-memory image (PIL / array) for Hugging Face datasets.
        label: class name.
        group: patient (or other) id that must stay on one side of a split.
        split: `train` or `test` when the source fixes it, else None (carved later).
        data_source: the hospital or collection the image comes from (per-source validation and evaluation).
    """

    source: Any
    label: str
    group: str
    split: str | None = None
    data_source: str = ""


@dataclass
class Splits:
    """Train / validation / test samples and the class order shared by all three."""

    label_names: list[str]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def targets(self, split: str) -> np.ndarray:
        """Integer class indices of a split, in `label_names` order."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[s.label] for s in getattr(self, split)], dtype=np.int64)

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per class for each split, plus patient-group counts."""
        out: dict[str, dict[str, int]] = {}
        for split in (TRAIN, VAL, TEST):
            samples = getattr(self, split)
            counts = Counter(s.label for s in samples)
            out[split] = {name: counts.get(name, 0) for name in self.label_names}
            out[split]["groups"] = len({s.group for s in samples})
        return out


_KERMANY_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1000_bacteria_2931.jpeg
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),  # IM-0115-0001.jpeg, NORMAL2-IM-0388-0001.jpeg
)


def kermany_patient_id(path: str | Path) -> str:
    """Patient id encoded in a Kermany file name (`person123`, `IM-0115`, `NORMAL2-IM-0388`); else the stem."""
    name = Path(path).name
    for pattern in _KERMANY_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return Path(path).stem


def order_labels(names: Iterable[str]) -> list[str]:
    """Class order: NORMAL, PNEUMONIA, COVID-19 first when present, then the others alphabetically."""
    names = set(names)
    known = [n for n in PREFERRED_ORDER if n in names]
    return known + sorted(names - set(known))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)


def load_image_folder(root: Path, *, prefix: str = "", data_source: str | None = None) -> list[Sample]:
    """Samples from a class-per-folder tree, with `train/` and `test/` splits when the tree has them.

    Every sample's `data_source` is `data_source`, default the folder's name.
    """
    data_source = data_source or root.name
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in {"train", "val", "test"}]
    trees = [(d, TEST if d.name.lower() == TEST else TRAIN) for d in split_dirs] or [(root, None)]
    samples = []
    for tree, split in trees:
        for class_dir in sorted(d for d in tree.iterdir() if d.is_dir()):
            for path in _images_in(class_dir):
                samples.append(Sample(path, class_dir.name, prefix + kermany_patient_id(path), split, data_source))
    if not samples:
        raise DatasetError(
            f"No images under '{root}'. Expected one sub-folder per class (e.g. NORMAL/, PNEUMONIA/), "
            f"optionally inside train/ and test/."
        )
    return samples


def load_csv(path: Path, *, prefix: str = "") -> list[Sample]:
    """Samples from a CSV of `path,label[,group[,source]]` rows; relative paths are taken from the CSV's folder.

    The data source defaults to the CSV file's stem.
    """
    samples = []
    with path.open(newline="", encoding="utf-8") as handle:
        for i, row in enumerate(csv.reader(handle)):
            if not row or (i == 0 and row[0].strip().lower() in {"path", "file", "filename", "image"}):
                continue
            if len(row) < 2:
                raise DatasetError(f"{path} line {i + 1}: expected path,label[,group], got {row!r}.")
            image = Path(row[0].strip())
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise DatasetError(f"{path} line {i + 1}: image '{image}' does not exist.")
            group = row[2].strip() if len(row) > 2 and row[2].strip() else kermany_patient_id(image)
            source = row[3].strip() if len(row) > 3 and row[3].strip() else path.stem
            samples.append(Sample(image, row[1].strip(), prefix + group, data_source=source))
    if not samples:
        raise DatasetError(f"{path} has no rows; expected path,label[,group].")
    return samples


#: covid-chestxray `finding` values -> our classes. COVID-19 (with or without ARDS) is COVID-19; every other
#: pneumonia (bacterial, viral non-COVID, fungal) is PNEUMONIA; "No Finding" is NORMAL; "todo" (not yet
#: labelled) rows are dropped.
def covid_chestxray_label(finding: str) -> str | None:
    """Map a covid-chestxray `finding` to NORMAL / PNEUMONIA / COVID-19, or None to drop the row."""
    text = finding.strip()
    if "COVID-19" in text:
        return "COVID-19"
    if text.lower() == "no finding":
        return "NORMAL"
    if text.lower() in {"todo", ""}:
        return None
    return "PNEUMONIA"


def load_covid_chestxray(root: Path, *, prefix: str = "covid:") -> list[Sample]:
    """Frontal images of Cohen et al.'s covid-chestxray collection, grouped by `patientid`."""
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # A few files are listed under two patient ids: treat such ids as one patient (union-find), and keep each
    # file once, so no image or person can end up on both sides of a split.
    parent: dict[str, str] = {}

    def find(pid: str) -> str:
        while parent.setdefault(pid, pid) != pid:
            pid = parent[pid]
        return pid

    first_owner: dict[str, str] = {}
    for row in rows:
        pid, name = row["patientid"].strip(), row["filename"]
        if name in first_owner:
            a, b = sorted((find(first_owner[name]), find(pid)))
            parent[b] = a
        else:
            first_owner[name] = pid
    samples, seen = [], set()
    for row in rows:
        label = covid_chestxray_label(row.get("finding", ""))
        image = root / "images" / row["filename"]
        if label is None or row["filename"] in seen or not image.is_file():
            continue
        seen.add(row["filename"])
        samples.append(Sample(image, label, prefix + find(row["patientid"].strip()), data_source=root.name))
    if not samples:
        raise DatasetError(f"No usable rows in {root / 'metadata.csv'} (images expected under {root / 'images'}).")
    return samples


#: Columns of a folder's `metadata.csv` that names each image's data source and patient (adult-cxr).
SOURCE_METADATA_COLUMNS = frozenset({"path", "label", "source", "patient_id"})


def load_source_metadata(root: Path) -> list[Sample]:
    """Samples of a folder whose `metadata.csv` has `path,label,source,patient_id[,split]` rows (adult-cxr).

    Paths are relative to the folder; the split comes from the `split` column (`test` is kept as the test split),
    else from a `test/` path prefix. Patients are grouped within their source (`source:patient_id`).
    """
    samples = []
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        for i, row in enumerate(csv.DictReader(handle), 2):
            image = root / row["path"].strip()
            if not image.is_file():
                raise DatasetError(f"{root / 'metadata.csv'} line {i}: image '{image}' does not exist.")
            split = (row.get("split") or "").strip().lower() or Path(row["path"]).parts[0].lower()
            source = row["source"].strip()
            samples.append(
                Sample(image, row["label"].strip(), f"{source}:{row['patient_id'].strip()}",
                       TEST if split == TEST else TRAIN, source)  # fmt: skip
            )
    if not samples:
        raise DatasetError(f"{root / 'metadata.csv'} has no rows.")
    return samples


def merge_labels(samples: Sequence[Sample], mapping: dict[str, str]) -> list[Sample]:
    """Samples with labels renamed by `mapping` (e.g. COVID-19 -> PNEUMONIA for a two-class pneumonia model)."""
    from dataclasses import replace

    return [replace(s, label=mapping.get(s.label, s.label)) for s in samples]


def parse_label_map(text: str | None) -> dict[str, str]:
    """`"COVID-19=PNEUMONIA,X=Y"` -> {"COVID-19": "PNEUMONIA", "X": "Y"}."""
    mapping = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        old, sep, new = part.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise DatasetError(f"Label map entry '{part}' is not OLD=NEW (e.g. COVID-19=PNEUMONIA).")
        mapping[old.strip()] = new.strip()
    return mapping


def source_weights(samples: Sequence[Sample], power: float) -> np.ndarray:
    """Per-sample sampling weights under which each data source is drawn in proportion to `size ** power`.

    `power` 1 keeps the data as it is (Kermany's 5,000 images dominate), 0 draws every source equally often
    (a 140-image source is then repeated 35 times as often as a Kermany image), 0.5 is the usual compromise
    (square-root sampling). Weights sum to 1.
    """
    counts = Counter(s.data_source for s in samples)
    weights = np.array([counts[s.data_source] ** (power - 1.0) for s in samples], dtype=np.float64)
    return weights / weights.sum()


def load_hf_dataset(
    name: str, *, streaming: bool = False, split: str | None = None, decode: bool = True
) -> list[Sample] | Iterator[Sample]:
    """Samples of a Hugging Face dataset: its `test` split is kept as test, the others are pooled for training.

    `name` is a hub id or a local folder `datasets.load_dataset` reads (parquet files as on the hub, an image
    folder). The dataset needs an Image column and a ClassLabel column; a `patient_id` (or `patientid`, `patient`,
    `group`) column groups the samples by patient.

    Args:
        name: dataset id or folder.
        streaming: return a lazy iterator instead of a list: `datasets` streams the rows (`streaming=True`,
            an `IterableDataset`), so a dataset larger than memory or disk can be scored or evaluated sample by
            sample (`python -m xray predict --dataset NAME --ray`, or a loop over `read_pixels`).
        split: only this split (e.g. `test`); default every split.
        decode: False leaves each image undecoded: `Sample.source` is then the file's bytes (or its path or URL
            when the dataset stores no bytes), for `xray.imaging.io.read_image`, the app's own reader.

    Returns:
        A list of samples, or with `streaming` an iterator over them (the dataset is opened on the first `next`).
    """
    samples = _hf_samples(name, streaming=streaming, split=split, decode=decode)
    return samples if streaming else list(samples)


def _hf_samples(name: str, *, streaming: bool, split: str | None, decode: bool) -> Iterator[Sample]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as exc:  # datasets raises many types (connection, missing config, missing files)
        raise DatasetError(f"Cannot load Hugging Face dataset '{name}': {exc}") from exc
    parts = {split: dataset} if split is not None else dict(dataset.items())
    for split_name, part in parts.items():
        features = part.features
        if features is None:  # some streamed datasets only know their columns once read
            part = part._resolve_features()
            features = part.features
        image_col = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
        label_col = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
        if image_col is None or label_col is None:
            raise DatasetError(f"Dataset '{name}' needs an Image column and a ClassLabel column; it has {features}.")
        if not decode:
            part = part.cast_column(image_col, datasets.Image(decode=False))
        names = features[label_col].names
        group_col = next((k for k in ("patient_id", "patientid", "patient", "group") if k in features), None)
        kept = TEST if split_name == TEST else TRAIN
        for i, row in enumerate(part):
            group = str(row[group_col]) if group_col else f"{name}:{split_name}:{i}"
            image = row[image_col]
            if not decode:
                image = image.get("bytes") or image.get("path")
            yield Sample(image, names[row[label_col]], group, kept, name)


def load_samples(source: str | Path) -> list[Sample]:
    """Samples from a folder, a CSV file or a covid-chestxray folder (see the module docstring)."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_csv(path, prefix=f"{path.stem}:")
    if path.is_dir() and (path / "metadata.csv").is_file() and (path / "images").is_dir():
        return load_covid_chestxray(path)
    if path.is_dir() and (path / "metadata.csv").is_file():
        with (path / "metadata.csv").open(newline="", encoding="utf-8") as handle:
            header = set(next(csv.reader(handle), []))
        if SOURCE_METADATA_COLUMNS <= header:
            return load_source_metadata(path)
    if path.is_dir():
        return load_image_folder(path, prefix=f"{path.name}:")
    raise DatasetError(
        f"Data '{source}' not found. Give a class-per-folder image folder, a CSV of path,label[,group], "
        f"a covid-chestxray folder, or --dataset NAME for a Hugging Face dataset."
    )


def split_by_group(
    samples: Sequence[Sample], fraction: float, *, seed: int, label_names: Sequence[str]
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into (rest, held_out) with about `fraction` held out, stratified by class, grouped by patient.

    Every group lands entirely on one side (sklearn's StratifiedGroupKFold, first fold held out).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if len(samples) < 2:
        return list(samples), []
    n_splits = max(2, round(1 / fraction))
    index = {name: i for i, name in enumerate(label_names)}
    y = np.array([index[s.label] for s in samples])
    groups = np.array([s.group for s in samples])
    # sklearn needs at least n_splits members in every class and n_splits groups
    n_splits = min(n_splits, len(set(groups)), int(np.bincount(y)[np.unique(y)].min()))
    if n_splits < 2:
        return list(samples), []
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest_idx, held_idx = next(splitter.split(np.zeros(len(y)), y, groups))
    return [samples[i] for i in rest_idx], [samples[i] for i in held_idx]


def make_splits(
    sources: Sequence[Sequence[Sample]],
    *,
    label_names: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Build train/val/test from one or more sources.

    A source with its own test split keeps it; a source without one has `test_fraction` of its patients held
    out as test. Validation is then carved from each data source's training samples (a folder holding several
    hospitals is carved per hospital, so every data source is represented), stratified and grouped by patient.

    Args:
        sources: sample lists from `load_samples` / `load_hf_dataset`.
        label_names: class order; default `order_labels` of the labels found.
        val_fraction: share of training patients for validation.
        test_fraction: share of patients held out as test for sources without a test split.
        seed: split seed.
    """
    all_samples = [s for source in sources for s in source]
    found = order_labels(s.label for s in all_samples)
    names = list(label_names) if label_names else found
    unknown = set(found) - set(names)
    if unknown:
        raise DatasetError(f"Labels {sorted(unknown)} in the data are not among the label names {names}.")
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for source in sources:
        for part in _by_data_source(source):
            if any(s.split == TEST for s in part):
                pool = [s for s in part if s.split != TEST]
                test += [s for s in part if s.split == TEST]
            else:
                pool, held = split_by_group(part, test_fraction, seed=seed, label_names=names)
                test += held
            # Validation is carved per data source, so a source's validation patients are the same whichever other
            # sources join it (a model fine-tuned from a kermany-only model never validates on its training images).
            rest, held = split_by_group(pool, val_fraction, seed=seed + 1, label_names=names)
            train += rest
            val += held
    splits = Splits(label_names=names, train=train, val=val, test=test)
    check_disjoint(splits)
    return splits


def _by_data_source(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Samples grouped by `data_source`, in order of first appearance (one group for a single-source folder)."""
    parts: dict[str, list[Sample]] = {}
    for s in samples:
        parts.setdefault(s.data_source, []).append(s)
    return list(parts.values())


def check_disjoint(splits: Splits) -> None:
    """Raise DatasetError when a patient group or an image appears in two of train / val / test."""
    sides = {name: getattr(splits, name) for name in (TRAIN, VAL, TEST)}
    groups = {name: {s.group for s in samples} for name, samples in sides.items()}
    files = {
        name: {str(s.source) for s in samples if isinstance(s.source, (str, Path))} for name, samples in sides.items()
    }
    for a, b in ((TRAIN, VAL), (TRAIN, TEST), (VAL, TEST)):
        shared_files = files[a] & files[b]
        if shared_files:
            raise DatasetError(f"{len(shared_files)} images are in both {a} and {b}, e.g. {sorted(shared_files)[0]}.")
    # Kermany's official train/test folders are a fixed published split; overlap there is reported, not fixed.
    for a, b in ((TRAIN, VAL), (TRAIN, TEST), (VAL, TEST)):
        shared = groups[a] & groups[b]
        if shared and (a, b) == (TRAIN, VAL):
            raise DatasetError(f"{len(shared)} patients are in both {a} and {b}, e.g. {sorted(shared)[0]}.")
        if shared:
            logger.warning(
                "%d patient ids are in both %s and %s (fixed official split of the source)", len(shared), a, b
            )


def read_pixels(sample: Sample, size: tuple[int, int] | None = None, interpolation: str = "bilinear") -> np.ndarray:
    """Decode a sample with `xray.imaging.io.read_image` (as the app does) into uint8 pixels, optionally pre-resized.

    Pre-resizing goes through `xray.imaging.transforms.resize_pixels`, the transform's own resize, so the cached pixels
    are exactly what the transform would produce (resizing to the same size is then a no-op), at a fraction of
    the memory. Grey images are kept as HxW (the transform turns them into three channels).

    Args:
        sample: the sample to decode.
        size: (height, width) to resize to, or None to keep the original size.
        interpolation: `bilinear`, `bicubic` or `nearest` (the model's data config).
    """
    from xray.imaging.io import read_image
    from xray.imaging.transforms import resize_pixels

    if isinstance(sample.source, (str, Path)):
        image = read_image(sample.source).pixels
    else:
        image = np.asarray(sample.source.convert("RGB") if hasattr(sample.source, "convert") else sample.source)
    if size is None:
        size = image.shape[:2]
    return np.ascontiguousarray(resize_pixels(image, {"input_size": (3, *size), "interpolation": interpolation}))


def load_pixels(
    samples: Sequence[Sample], size: tuple[int, int] | None = None, interpolation: str = "bilinear", *, progress=False
) -> list[np.ndarray]:
    """Decode many samples into memory once, so epochs do not re-read and re-decode JPEGs."""
    from tqdm.auto import tqdm

    return [
        read_pixels(s, size, interpolation) for s in tqdm(samples, desc="decode", disable=not progress, leave=False)
    ]


class ImageDataset:
    """A torch-style dataset over decoded pixels: applies the (train or eval) transform, returns (tensor, label)."""

    def __init__(self, pixels: Sequence[np.ndarray], targets: Sequence[int], transform) -> None:
        if len(pixels) != len(targets):
            raise ValueError(f"{len(pixels)} images for {len(targets)} targets")
        self.pixels = pixels
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        return self.transform(self.pixels[index]), int(self.targets[index])
