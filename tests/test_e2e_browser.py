"""End to end in real headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser).

A doctor signs in, uploads a sample X-ray, sees the probabilities and the heatmap, and finds the record in
History. Set XRAY_SCREENSHOT_DIR to keep the screenshots (the README's docs/ image is made this way).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.app_server import running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "person1951_bacteria_4882.jpeg"
PASSWORD = "a browser passphrase"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium missing: apt-get install -y chromium chromium-driver (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def test_sign_in_diagnose_and_find_the_record_in_history(browser, tmp_path, tiny_model_dir):
    from playwright.sync_api import expect

    model = os.environ.get("XRAY_E2E_MODEL") or f"local-dir:{tiny_model_dir}"
    shots = tmp_path / "shots"
    shots.mkdir()
    with running_app(tmp_path, model_names=[model], doctors={"dr.grey": PASSWORD}) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server["url"])
        # Gradio's sign-in page; the app itself is not served before it.
        expect(page.get_by_text("Sign in with your doctor account")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Analyse and save")).to_have_count(0)
        page.get_by_label("username").fill("dr.grey")
        page.get_by_label("password").fill("wrong password")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials", exact=False)).to_be_visible(timeout=30_000)
        page.get_by_label("username").fill("dr.grey")  # the sign-in page clears the form after a failure
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Signed in as")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Dr Grey")).to_be_visible()

        page.locator("input[type=file]").first.set_input_files(str(SAMPLE))
        expect(page.locator("#xray-preview img")).to_be_visible(timeout=30_000)
        page.get_by_label("Patient name or ID").first.fill("Browser Patient 7")
        page.get_by_role("button", name="Analyse and save").click()
        expect(page.get_by_text("saved as record")).to_be_visible(timeout=120_000)
        probabilities = page.locator("#xray-probabilities")
        expect(probabilities.get_by_text("NORMAL").first).to_be_visible()
        expect(probabilities.get_by_text("PNEUMONIA").first).to_be_visible()
        expect(probabilities.get_by_text("%").first).to_be_visible()
        expect(page.get_by_text("operating threshold")).to_be_visible()
        heatmap = page.locator("#xray-heatmap img")
        expect(heatmap).to_be_visible()
        assert heatmap.evaluate("img => img.naturalWidth") > 100
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "diagnose.png"), full_page=True)

        page.get_by_role("tab", name="History").click()
        row = page.locator("#xray-history").get_by_role("row").filter(has_text="Browser Patient 7")
        expect(row).to_be_visible(timeout=30_000)
        row.get_by_text("Browser Patient 7").click()
        expect(page.get_by_text("Record 1: Browser Patient 7")).to_be_visible(timeout=60_000)
        expect(page.locator("#xray-saved-heatmap img")).to_be_visible()
        page.screenshot(path=str(shots / "history.png"), full_page=True)

        page.goto(server["url"] + "logout")
        expect(page.get_by_text("Sign in with your doctor account")).to_be_visible(timeout=30_000)
        page.close()
    keep = os.environ.get("XRAY_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, Path(keep) / shot.name)
