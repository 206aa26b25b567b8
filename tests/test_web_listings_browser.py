"""History and Batch tables in headless Chromium: long text wraps inside its column, no column leaves the screen.

The tables are built as the app builds them (`gr.Dataframe` with the module's columns, widths and rows); the
screenshots are kept under XRAY_SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tests.app_server import free_port
from xray.records.db import Record
from xray.web import batch, history

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
LONG_NAME = " ".join(["Maximilianus-Bartholomaeus"] * 7)[:200]
GATE = ("OUT OF SCOPE: It is a colour image; chest X-rays are grey-scale. It is unlike the images the model was "
        "trained on. (the model has no ood.npz: image statistics only)")


def _record(rid: int, name: str, reasons: list[str] | None) -> Record:
    return Record(
        id=rid, doctor_id=1, patient_name=name, exam_date=date(2025, 6, 1), created_at=datetime(2025, 6, 1, tzinfo=UTC),
        image_sha256="a" * 64, model_name="local-dir:/srv/models/pneumonia-efficientnet-lite0", model_version="v",
        label_names=["NORMAL", "PNEUMONIA"], probabilities={"NORMAL": 0.35, "PNEUMONIA": 0.65},
        predicted_label="PNEUMONIA", gate_reasons=reasons,
    )  # fmt: skip


def test_long_names_and_reasons_keep_every_column_on_screen(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium missing: apt-get install -y chromium chromium-driver (.ci/run does this)")
    import gradio as gr
    from playwright.sync_api import sync_playwright

    records = [_record(12, LONG_NAME, ["It is a colour image."]), _record(11, "P" * 200, [])]
    rows = [
        batch.BatchRow(file="study.zip/" + "scan_" * 20 + ".jpeg", record_id=3, patient="scan_" * 40, label="PNEUMONIA",
                       probabilities={"NORMAL": 0.35, "PNEUMONIA": 0.65}, gate=GATE, gate_reasons=["colour"]),
        batch.BatchRow(file="notes.png", error="'notes.png' is a text file, not an image. Accepted files: PNG, JPEG, "
                                               "BMP, TIFF or WebP images and single-frame DICOM files."),
    ]  # fmt: skip
    with gr.Blocks() as demo:
        gr.Dataframe(
            value={"headers": history.HISTORY_COLUMNS, "data": history.history_rows(records)}, interactive=False,
            wrap=True, column_widths=history.HISTORY_COLUMN_WIDTHS, elem_id="xray-history",
        )  # fmt: skip
        gr.Dataframe(
            value={"headers": batch.BATCH_COLUMNS, "data": batch.batch_table(rows)}, interactive=False, wrap=True,
            column_widths=batch.BATCH_COLUMN_WIDTHS, elem_id="xray-batch",
        )  # fmt: skip
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#xray-batch table")
            page.wait_for_timeout(500)
            shots = Path(os.environ.get("XRAY_SCREENSHOT_DIR") or tmp_path)
            page.screenshot(path=str(shots / "listings-long-text.png"), full_page=True)
            for element, columns in (("xray-history", history.HISTORY_COLUMNS), ("xray-batch", batch.BATCH_COLUMNS)):
                box = page.locator(f"#{element}").bounding_box()
                heads = page.locator(f"#{element} thead th")
                assert heads.count() == len(columns)
                for i in range(heads.count()):
                    head = heads.nth(i).bounding_box()
                    assert head["x"] + head["width"] <= min(box["x"] + box["width"], 1280) + 1, (element, columns[i])
            history_text = page.locator("#xray-history").inner_text()
            assert "⚠️ OUT OF SCOPE · PNEUMONIA" in " ".join(history_text.split())
            assert "single-frame DICOM files." in " ".join(page.locator("#xray-batch").inner_text().split())
            browser.close()
    finally:
        demo.close()
