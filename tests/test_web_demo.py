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


def test_thumbnails_are_inline():
    html = demo.thumbnails_html(demo.samples()[:2])
    assert html.count("data:image/jpeg;base64,") == 2 and "Sample 2 (dataset label: NORMAL)" in html
