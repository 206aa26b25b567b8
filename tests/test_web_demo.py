"""xray.web.demo: the public demo's samples, rate limit, upload clean-up and analysis (nothing stored)."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from tests.web_cases import MB, PNEUMONIA_JPEG
from xray.errors import InvalidInputError
from xray.web import demo


def test_samples_are_offered_by_name_never_by_path():
    offered = demo.samples()
    assert [s.name for s in offered] == sorted(p.name for p in PNEUMONIA_JPEG.parent.glob("*.jpeg"))
    assert offered[0].label == "Sample 1 (dataset label: NORMAL)" and offered[-1].dataset_label == "PNEUMONIA"
    assert demo.find_sample(PNEUMONIA_JPEG.name, offered).path == PNEUMONIA_JPEG
    for name in (str(PNEUMONIA_JPEG), "../data/xray.db", "/etc/passwd", "README.md"):
        with pytest.raises(InvalidInputError, match="Unknown sample"):
            demo.find_sample(name, offered)
    with pytest.raises(InvalidInputError, match="Pick one"):
        demo.find_sample(None, offered)


def test_rate_limit_allows_n_per_window_per_address_and_says_when_to_retry():
    now = [1000.0]
    wall = datetime(2025, 6, 30, 12, 0, 0, tzinfo=UTC)
    limiter = demo.RateLimiter(3, window_s=60, clock=lambda: now[0], wall_clock=lambda: wall)
    for _ in range(3):
        limiter.hit("10.0.0.1")
        now[0] += 10
    with pytest.raises(demo.RateLimitedError) as refused:
        limiter.hit("10.0.0.1")
    # the first call was at 1000, so the next one is allowed at 1060: 30 s after "now" (1030)
    assert refused.value.retry_after_s == 30
    assert "3 analyses per minute" in str(refused.value) and "Try again in 30 s (at 12:00:30 UTC)" in str(refused.value)
    limiter.hit("10.0.0.2")  # another address has its own allowance
    now[0] = 1060.5
    limiter.hit("10.0.0.1")  # the oldest call left the window
    now[0] = 2000
    assert limiter.clients == 0  # nothing about a client outlives its window
    with pytest.raises(ValueError):
        demo.RateLimiter(0)


def test_client_address_trusts_forwarded_only_behind_a_proxy():
    assert demo.client_address("10.1.1.1", "1.2.3.4, 10.0.0.1", trust_forwarded=True) == "1.2.3.4"
    assert demo.client_address("10.1.1.1", "1.2.3.4", trust_forwarded=False) == "10.1.1.1"
    assert demo.client_address(None, None, trust_forwarded=False) == "unknown"


def test_discard_upload_deletes_only_inside_the_demo_folder(tmp_path):
    root = tmp_path / "gradio" / "xray-public-demo"
    upload = root / "abc123" / "scan.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"x")
    outside = tmp_path / "gradio" / "doctor-upload.png"
    outside.write_bytes(b"y")
    assert demo.discard_upload(upload, root) is True
    assert not upload.exists() and not upload.parent.exists() and root.is_dir()
    assert demo.discard_upload(outside, root) is False and outside.exists()
    assert demo.discard_upload(root / ".." / "doctor-upload.png", root) is False and outside.exists()
    assert demo.discard_upload(None, root) is False


def test_only_the_demos_own_uploads_are_read(tmp_path):
    root = tmp_path / "gradio" / "xray-public-demo"
    own = root / "abc" / "scan.png"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    demo.check_own_upload(own, root)
    demo.check_own_upload(None, root)
    elsewhere = tmp_path / "gradio" / "def" / "scan.png"
    for path in (elsewhere, root / ".." / "def" / "scan.png", tmp_path / "data" / "xray.db"):
        with pytest.raises(InvalidInputError, match="upload field"):
            demo.check_own_upload(path, root)
    own.unlink()
    with pytest.raises(InvalidInputError, match="upload the file again"):
        demo.check_own_upload(own, root)


def test_upload_size_limit_names_the_demo_setting(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"0" * (2 * MB))
    with pytest.raises(InvalidInputError, match=r"up to 1 MiB \(XRAY_DEMO_MAX_UPLOAD_MB\)"):
        demo.read_demo_upload(big, max_bytes=MB)
    with pytest.raises(InvalidInputError, match="Upload a chest X-ray"):
        demo.read_demo_upload(None, max_bytes=MB)


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_analyse_sample_gives_everything_inline(model_name):
    result = demo.analyse_sample(
        PNEUMONIA_JPEG.name, offered=demo.samples(), model_name=model_name, allowed_models=[model_name],
        max_pixels=10**8,
    )  # fmt: skip
    assert set(result.probabilities) == {"NORMAL", "PNEUMONIA"}
    assert sum(result.probabilities.values()) == pytest.approx(1)
    assert f"Model output: {result.label}" in result.summary and "operating threshold" in result.summary
    assert result.in_scope and result.gate_text.startswith("**Input check:** in scope")
    assert "ood.npz" in result.gate_text  # the tiny model has no OOD statistics: said with the verdict
    assert "lung fields" in result.heat_text and "nothing was stored" in result.model_text
    html = result.images_html()
    original, overlay = (_decode(u) for u in re.findall(r'src="([^"]+)"', html))
    assert 'id="xray-demo-heatmap"' in html and original.shape == overlay.shape and max(original.shape) <= 1024
    assert np.abs(original.astype(int) - overlay.astype(int)).mean() > 5  # the heatmap is really drawn
    with pytest.raises(InvalidInputError, match="Unknown model"):
        demo.analyse_sample(PNEUMONIA_JPEG.name, offered=demo.samples(), model_name="covid",
                            allowed_models=[model_name], max_pixels=10**8)  # fmt: skip


def test_out_of_scope_image_gets_reasons_not_a_prediction(model_name):
    y, x = np.mgrid[0:240, 0:320]
    photo = np.stack([x * 255 // 319, y * 255 // 239, 255 - x * 255 // 319], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    result = demo.analyse_bytes(
        buffer.getvalue(), filename="holiday.png", model_name=model_name, allowed_models=[model_name], max_pixels=10**8
    )
    assert not result.in_scope and "prediction is not shown" in result.gate_text and "colour image" in result.gate_text
    assert 'id="xray-demo-heatmap"' not in result.images_html() and 'id="xray-demo-original"' in result.images_html()


def test_caveat_is_shown_with_the_result():
    result = demo.DemoResult(
        model_name="covid", architecture="a", version="v", label="NORMAL", probabilities={"NORMAL": 1.0}, summary="",
        in_scope=True, caveat="It follows age and source.",
    )  # fmt: skip
    assert result.caveat_text == "⚠️ About this model: It follows age and source."


def test_upload_rate_middleware_answers_429_with_retry_after():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    limiter = demo.RateLimiter(2)
    web = Starlette(
        routes=[Route("/gradio_api/upload", lambda request: PlainTextResponse("stored"), methods=["POST"]),
                Route("/other", lambda request: PlainTextResponse("ok"), methods=["POST"])],
        middleware=[Middleware(demo.UploadRateLimit, limiter=limiter)],
    )  # fmt: skip
    with TestClient(web) as client:
        assert [client.post("/gradio_api/upload").status_code for _ in range(2)] == [200, 200]
        refused = client.post("/gradio_api/upload")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "2 uploads per minute" in refused.json()["detail"] and "Try again in" in refused.json()["detail"]
        assert client.post("/other").status_code == 200  # only uploads are counted


def test_thumbnails_are_inline_buttons_that_name_their_sample():
    offered = demo.samples()[:2]
    html = demo.thumbnails_html(offered)
    assert html.count("data:image/jpeg;base64,") == 2 and "Sample 2 (dataset label: NORMAL)" in html
    # they look clickable because they are: one button per sample, named by data-sample
    assert [m for m in re.findall(r'<button type="button" class="xray-thumb" data-sample="([^"]+)"', html)] == [
        s.name for s in offered
    ]
    assert "trigger('click', {sample: b.dataset.sample})" in demo.THUMBNAILS_JS
    assert "cursor: pointer" in demo.THUMBNAILS_CSS
    import gradio as gr

    assert demo.clicked_sample(gr.EventData(None, {"sample": offered[0].name})) == offered[0].name
    assert demo.clicked_sample(gr.EventData(None, {})) is None


@pytest.mark.browser
def test_clicking_the_same_thumbnail_twice_sends_two_clicks():
    """In headless Chromium: every click on a thumbnail reaches `trigger`, the same one again included."""
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium missing: apt-get install -y chromium chromium-driver (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    offered = demo.samples()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            thumbnails = demo.thumbnails_html(offered)
            page.set_content(f'<style>{demo.THUMBNAILS_CSS}</style><div id="root">{thumbnails}</div>')
            # the same call Gradio makes: js_on_load with `element` and `trigger`
            page.evaluate("js => { window.sent = []; const element = document.getElementById('root'); "
                          "const trigger = (name, data) => window.sent.push([name, data.sample]); eval(js); }",
                          demo.THUMBNAILS_JS)  # fmt: skip
            second = page.locator(f'button[data-sample="{offered[1].name}"]')
            second.click()
            second.click()
            page.locator(f'button[data-sample="{offered[0].name}"]').click()
            sent = page.evaluate("window.sent")
            cursor = second.evaluate("b => getComputedStyle(b).cursor")
        finally:
            browser.close()
    assert sent == [["click", offered[1].name], ["click", offered[1].name], ["click", offered[0].name]]
    assert cursor == "pointer"


def _show(model_name: str, limiter: demo.RateLimiter, cache: demo.SampleResults, allowed: list[str]) -> dict:
    return dict(offered=demo.samples(), model_name=model_name, allowed_models=allowed, max_pixels=10**8,
                limiter=limiter, address="10.0.0.9", cache=cache)  # fmt: skip


def test_samples_already_analysed_are_free_and_the_limit_is_one_message(model_name, tmp_path):
    """Exploring the samples does not use up the limit; when it is reached, one message replaces the result."""
    limiter, cache = demo.RateLimiter(2), demo.SampleResults()
    first, second, third = (s.name for s in demo.samples()[:3])
    shown = demo.show_sample(first, **_show(model_name, limiter, cache, [model_name]))
    assert shown[0] and "nothing was stored" in shown[6] and len(cache) == 1
    for _ in range(5):  # the same sample again and again: the same answer, never counted
        assert demo.show_sample(first, **_show(model_name, limiter, cache, [model_name])) == shown
    demo.show_sample(second, **_show(model_name, limiter, cache, [model_name]))  # a new one: counted (2 of 2)
    limited = demo.show_sample(third, **_show(model_name, limiter, cache, [model_name]))
    assert limited[0] is None and all(v == "" for v in limited[2:])  # the old result is gone
    assert limited[1].startswith("**Limit reached.** The public demo takes 2 analyses per minute")
    assert re.search(r"Try again in \d+ s \(at \d\d:\d\d:\d\d UTC\)\. Samples already", limited[1])  # as written
    assert demo.show_sample(first, **_show(model_name, limiter, cache, [model_name])) == shown  # still free
    upload = tmp_path / "xray-public-demo" / "abc" / "scan.jpeg"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(PNEUMONIA_JPEG.read_bytes())
    refused = demo.show_upload(upload, upload_root=tmp_path / "xray-public-demo", max_bytes=10 * MB,
                               model_name=model_name, allowed_models=[model_name], max_pixels=10**8,
                               limiter=limiter, address="10.0.0.9")  # fmt: skip
    assert refused[0] is None and refused[1].startswith("**Limit reached.**") and not upload.exists()
    assert "not yet analysed" in demo.rate_text(10) and "not counted" in demo.rate_text(10)


def test_switching_the_model_never_leaves_the_old_models_result(model_name, tiny_model_dir_3class):
    """With a sample selected the new model answers for it; without one, the result area is emptied."""
    other = f"local-dir:{tiny_model_dir_3class}"
    allowed = [model_name, other]
    limiter, cache = demo.RateLimiter(10), demo.SampleResults()
    sample = demo.samples()[0].name
    before = demo.show_sample(sample, **_show(model_name, limiter, cache, allowed))
    assert {c["label"] for c in before[0]["confidences"]} == {"NORMAL", "PNEUMONIA"}
    show = _show(other, limiter, cache, allowed)
    del show["model_name"]
    after = demo.model_changed(sample, other, **show)
    assert {c["label"] for c in after[0]["confidences"]} == {"NORMAL", "PNEUMONIA", "COVID-19"}
    assert tiny_model_dir_3class.name in after[6]
    assert after != before
    cleared = demo.model_changed(None, other, **show)
    assert cleared[0] is None and cleared[4] == "" and cleared[6] == "" and "Model changed to" in cleared[1]


def test_warm_up_keeps_the_first_samples_answer(model_name):
    cache = demo.SampleResults()
    demo.warm_up(model_name, [model_name], demo.samples(), 10**8, cache)
    limiter = demo.RateLimiter(1)
    limiter.hit("10.0.0.9")  # the limit is used up, yet the warmed-up sample is shown
    shown = demo.show_sample(demo.samples()[0].name, **_show(model_name, limiter, cache, [model_name]))
    assert shown[0] and len(cache) == 1


def test_two_requests_for_the_same_new_sample_count_once(model_name):
    """A double event (two requests at once for one sample and model) is analysed and counted once."""
    from concurrent.futures import ThreadPoolExecutor

    limiter, cache = demo.RateLimiter(1), demo.SampleResults()
    name = demo.samples()[1].name
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: demo.show_sample(name, **_show(model_name, limiter, cache, [model_name])),
                                range(2)))  # fmt: skip
    assert results[0] == results[1] and results[0][0] and len(cache) == 1


def test_demo_samples_use_the_childrens_threshold_and_uploads_the_adults(tiny_model_dir, tmp_path):
    """The bundled samples are Kermany children; a visitor's upload without a DICOM age is taken as an adult."""
    import shutil

    from xray.inference.models import update_config

    folder = shutil.copytree(tiny_model_dir, tmp_path / "split-model")
    update_config(folder, thresholds={"children": 0.0, "adults": 1.0, "rule": "test", "chosen_on": "test"})
    model = f"local-dir:{folder}"
    sample = demo.analyse_sample(
        PNEUMONIA_JPEG.name, offered=demo.samples(), model_name=model, allowed_models=[model], max_pixels=10**8
    )
    assert sample.label == "PNEUMONIA"
    assert "operating threshold 0.000 for children (known from the sample's source)" in sample.summary
    upload = demo.analyse_bytes(
        PNEUMONIA_JPEG.read_bytes(), filename="upload.jpeg", model_name=model, allowed_models=[model], max_pixels=10**8
    )
    assert upload.label == "NORMAL" and upload.probabilities == sample.probabilities
    assert "operating threshold 1.000 for adults (no age given: most patients are adults)" in upload.summary
