"""Datasets and patient-grouped splits on the real chest X-rays in ../shared/data."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xray.errors import DatasetError
from xray.training.data import (
    Sample,
    Splits,
    check_disjoint,
    covid_chestxray_label,
    kermany_patient_id,
    load_csv,
    load_samples,
    make_splits,
    order_labels,
    read_pixels,
)


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0388-0001.jpeg", "NORMAL2-IM-0388"),
        ("scan.png", "scan"),
    ],
)
def test_kermany_patient_id(name, patient):
    assert kermany_patient_id(Path("x") / name) == patient


@pytest.mark.parametrize(
    ("finding", "label"),
    [
        ("COVID-19", "COVID-19"),
        ("COVID-19, ARDS", "COVID-19"),
        ("Streptococcus", "PNEUMONIA"),
        ("SARS", "PNEUMONIA"),
        ("Pneumocystis", "PNEUMONIA"),
        ("No Finding", "NORMAL"),
        ("todo", None),
    ],
)
def test_covid_chestxray_mapping(finding, label):
    assert covid_chestxray_label(finding) == label


def test_label_order_puts_the_negative_class_first():
    assert order_labels({"PNEUMONIA", "NORMAL"}) == ["NORMAL", "PNEUMONIA"]
    assert order_labels({"COVID-19", "PNEUMONIA", "NORMAL"}) == ["NORMAL", "PNEUMONIA", "COVID-19"]
    assert order_labels({"b", "a", "NORMAL"}) == ["NORMAL", "a", "b"]


def test_kermany_keeps_the_official_test_set_and_splits_validation_by_patient(shared_data):
    splits = make_splits([load_samples(shared_data / "kermany-224")], val_fraction=0.15, seed=0)
    assert splits.label_names == ["NORMAL", "PNEUMONIA"]
    counts = splits.summary()
    assert (counts["test"]["NORMAL"], counts["test"]["PNEUMONIA"]) == (234, 390)
    assert all("/test/" in str(s.source) for s in splits.test)
    assert len(splits.train) + len(splits.val) == 5216
    train_groups = {s.group for s in splits.train}
    val_groups = {s.group for s in splits.val}
    assert not train_groups & val_groups
    # stratified: validation keeps the training class mix (26% NORMAL) within a few points
    val_normal = counts["val"]["NORMAL"] / (counts["val"]["NORMAL"] + counts["val"]["PNEUMONIA"])
    assert 0.20 < val_normal < 0.32
    assert 0.10 < len(splits.val) / 5216 < 0.20
    # a patient with several images (person1000 has a bacteria and a virus image) lands on one side only
    sides = {side for side in ("train", "val") for s in getattr(splits, side) if s.group.endswith(":person1000")}
    assert len(sides) == 1


def test_covid_chestxray_holds_out_whole_patients(shared_data):
    samples = load_samples(shared_data / "covid-chestxray")
    labels = Counter(s.label for s in samples)
    assert labels["COVID-19"] == 415 + 12  # COVID-19 and COVID-19+ARDS
    assert labels["NORMAL"] == 19
    assert 60 < labels["PNEUMONIA"] < 110
    assert sum(labels.values()) < 559  # the 'todo' rows are dropped
    splits = make_splits([samples], val_fraction=0.15, test_fraction=0.2, seed=0)
    groups = {side: {s.group for s in getattr(splits, side)} for side in ("train", "val", "test")}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert Counter(s.label for s in splits.test)["COVID-19"] > 40
    multi = Counter(s.group for s in samples)
    assert max(multi.values()) > 1  # several images per patient exist, so the grouping matters


def test_check_disjoint_rejects_a_patient_on_both_sides():
    splits = Splits(
        label_names=["NORMAL", "PNEUMONIA"],
        train=[Sample("a.png", "NORMAL", "p1")],
        val=[Sample("b.png", "NORMAL", "p1")],
    )
    with pytest.raises(DatasetError, match="patients are in both train and val"):
        check_disjoint(splits)
    splits.val = [Sample("a.png", "NORMAL", "p2")]
    with pytest.raises(DatasetError, match="images are in both train and val"):
        check_disjoint(splits)


def test_csv_source(tmp_path, kermany_fullres):
    csv_path = tmp_path / "list.csv"
    rows = ["path,label,group"] + [f"{p},{p.parent.name},pat{i // 2}" for i, p in enumerate(kermany_fullres)]
    csv_path.write_text("\n".join(rows) + "\n")
    samples = load_csv(csv_path)
    assert len(samples) == 16
    assert {s.label for s in samples} == {"NORMAL", "PNEUMONIA"}
    assert samples[0].group == "pat0" and samples[1].group == "pat0"
    bad = tmp_path / "bad.csv"
    bad.write_text("missing.png,NORMAL\n")
    with pytest.raises(DatasetError, match="does not exist"):
        load_csv(bad)
    with pytest.raises(DatasetError, match="not found"):
        load_samples(tmp_path / "nowhere")


def test_labels_outside_the_given_names_are_rejected(shared_data):
    with pytest.raises(DatasetError, match="COVID-19"):
        make_splits([load_samples(shared_data / "covid-chestxray")], label_names=["NORMAL", "PNEUMONIA"])


def test_pre_resized_pixels_give_exactly_the_transform_input(shared_data):
    from xray.imaging.transforms import build_transform

    config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    transform = build_transform(config, train=False)
    sample = next(s for s in load_samples(shared_data / "covid-chestxray") if s.label == "COVID-19")
    original = read_pixels(sample)
    assert max(original.shape[:2]) > 224
    cached = read_pixels(sample, (224, 224), "bicubic")
    assert cached.shape == (224, 224) and cached.dtype == np.uint8  # grayscale kept as one channel
    np.testing.assert_array_equal(transform(original).numpy(), transform(cached).numpy())


def test_hugging_face_dataset_loader_on_a_local_image_folder(tmp_path, kermany_fullres):
    import shutil

    from xray.training.data import load_hf_dataset

    # `datasets` builds an imagefolder dataset (Image + ClassLabel columns) from a local folder, as from the hub
    for split in ("train", "test"):
        for path in kermany_fullres[:2] + kermany_fullres[-2:]:
            target = tmp_path / "ds" / split / path.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
    samples = load_hf_dataset(str(tmp_path / "ds"))
    assert Counter(s.split for s in samples) == {"train": 4, "test": 4}
    assert Counter(s.label for s in samples) == {"NORMAL": 4, "PNEUMONIA": 4}
    splits = make_splits([samples], val_fraction=0.5, seed=0)
    assert len(splits.test) == 4 and len(splits.train) + len(splits.val) == 4
    assert read_pixels(splits.test[0], (224, 224)).shape[:2] == (224, 224)


def test_adult_cxr_metadata_gives_each_image_its_source_patient_and_split(shared_data: Path):
    from xray.training.data import load_samples

    samples = load_samples(shared_data / "adult-cxr")
    # expected counts come from the folder's own metadata.csv, so the test follows the data as it grows
    with (shared_data / "adult-cxr" / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = Counter((r["source"], r["label"], r["split"]) for r in rows)
    by = Counter((s.data_source, s.label, s.split) for s in samples)
    assert by == expected and len(samples) == len(rows)
    assert {"rsna", "nih", "radiography"} <= {s.data_source for s in samples}  # the sources the README names
    assert all(s.group.startswith(f"{s.data_source}:") for s in samples)
    # patients are split by the folder: nobody in both train and test
    train = {s.group for s in samples if s.split == "train"}
    assert not train & {s.group for s in samples if s.split == "test"}


def test_multi_source_validation_holds_every_source_and_no_patient_twice(shared_data: Path):
    from xray.training.data import load_samples, make_splits, merge_labels, parse_label_map

    mapping = parse_label_map("COVID-19=PNEUMONIA")
    sources = [merge_labels(load_samples(shared_data / name), mapping)
               for name in ("kermany-224", "covid-chestxray", "adult-cxr")]  # fmt: skip
    splits = make_splits(sources, label_names=["NORMAL", "PNEUMONIA"], seed=0)
    every = {"kermany-224", "covid-chestxray"} | {s.data_source for s in sources[2]}
    assert {s.data_source for s in splits.val} == every and {s.data_source for s in splits.test} == every
    assert {s.label for s in splits.train} == {"NORMAL", "PNEUMONIA"}  # COVID-19 merged into PNEUMONIA
    # each source gives about 15% of its training patients to validation, a small one as well as Kermany
    for source in {s.data_source for s in sources[2]}:
        val = sum(s.data_source == source for s in splits.val)
        train = sum(s.data_source == source for s in splits.train)
        assert 0.08 < val / (val + train) < 0.25, source
    assert not {s.group for s in splits.train} & {s.group for s in splits.val}
    with pytest.raises(DatasetError, match="not OLD=NEW"):
        parse_label_map("COVID-19")


def test_source_weights_keep_a_small_source_from_being_drowned():
    from xray.training.data import Sample, source_weights

    samples = [Sample(f"k{i}", "NORMAL", f"k{i}", data_source="big") for i in range(400)]
    samples += [Sample(f"s{i}", "NORMAL", f"s{i}", data_source="small") for i in range(4)]
    share = {p: source_weights(samples, p)[400:].sum() for p in (1.0, 0.5, 0.0)}
    assert share[1.0] == pytest.approx(4 / 404)  # as the data come
    assert share[0.5] == pytest.approx(2 / (20 + 2))  # sqrt(4) / (sqrt(400) + sqrt(4))
    assert share[0.0] == pytest.approx(0.5)  # every source equally often
    assert source_weights(samples, 0.5).sum() == pytest.approx(1.0)
