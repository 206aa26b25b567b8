"""The launched app with a model carrying one threshold per population, driven through gradio_client.

Clients written before the patient group existed (six /diagnose inputs, three /batch inputs) keep working and get
the adults' threshold; the group is the last input.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app_server import running_app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE = EXAMPLES / "person1951_bacteria_4882.jpeg"
PASSWORD = "a thresholds passphrase"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[dict]:
    """The tiny model with thresholds children 0.0 (always PNEUMONIA) and adults 1.0 (NORMAL); doctor alice."""
    from xray.inference.models import update_config

    root = tmp_path_factory.mktemp("thresholds")
    folder = shutil.copytree(tiny_model_dir, root / "split-model")
    update_config(folder, thresholds={"children": 0.0, "adults": 1.0, "rule": "test", "chosen_on": "test"})
    model = f"local-dir:{folder}"
    with running_app(root, model_names=[model], doctors={"alice": PASSWORD}) as running:
        yield {**running, "model": model}


@pytest.fixture(scope="module")
def alice(server):
    from gradio_client import Client

    return Client(server["url"], auth=("alice", PASSWORD), verbose=False, download_files=str(server["root"] / "dl"))


def test_diagnose_api_takes_the_patient_group_last_with_adults_by_default(server, alice):
    from gradio_client import handle_file

    old_style = alice.predict(
        handle_file(str(SAMPLE)), "Old Client", "2024-05-01", server["model"], "gradcam", 0.4, api_name="/diagnose"
    )
    summary = old_style[1]
    assert "**Model output: NORMAL**" in summary  # the verdict (the Label's headline is the most probable class)
    assert "operating threshold 1.000 for adults (chosen by the doctor)" in summary
    child = alice.predict(
        handle_file(str(SAMPLE)), "New Client", "2024-05-01", server["model"], "gradcam", 0.4, "Child",
        api_name="/diagnose",
    )  # fmt: skip
    assert "**Model output: PNEUMONIA**" in child[1]
    assert child[0]["confidences"] == old_style[0]["confidences"]  # same image, same probabilities
    assert "operating threshold 0.000 for children (chosen by the doctor)" in child[1]
    record_id = int(child[-1])
    details, *_ = alice.predict(record_id, 0.4, api_name="/open_record")
    assert "threshold 0.000 for children (chosen by the doctor)" in str(details)


def test_batch_api_takes_the_patient_group_last(server, alice):
    from gradio_client import handle_file

    _table, _caveat, old_csv = alice.predict(
        [handle_file(str(SAMPLE))], "2024-06-01", server["model"], api_name="/batch"
    )
    _table, _caveat, child_csv = alice.predict(
        [handle_file(str(SAMPLE))], "2024-06-01", server["model"], "Child", api_name="/batch"
    )
    old_row = next(csv.DictReader(Path(old_csv).open(encoding="utf-8")))
    child_row = next(csv.DictReader(Path(child_csv).open(encoding="utf-8")))
    assert (old_row["predicted_label"], old_row["threshold"]) == (
        "NORMAL", "threshold 1.000 for adults (chosen by the doctor)",
    )  # fmt: skip
    assert (child_row["predicted_label"], child_row["threshold"]) == (
        "PNEUMONIA", "threshold 0.000 for children (chosen by the doctor)",
    )  # fmt: skip
