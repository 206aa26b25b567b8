"""Content-addressed image store: blobs once by hash, heatmaps as small 8-bit PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xray.records.storage import ImageStore, sha256_hex


def test_blobs_are_stored_once_by_content(tmp_path: Path):
    store = ImageStore(tmp_path / "images")
    first = store.put(b"same bytes")
    assert store.put(b"same bytes") == first == sha256_hex(b"same bytes")
    assert store.get(first) == b"same bytes" and store.exists(first)
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [first]
    assert store.delete(first) and not store.delete(first)
    with pytest.raises(FileNotFoundError):
        store.get(first)
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.path("../../etc/passwd")


def test_heatmap_is_shrunk_to_512_and_keeps_its_values(tmp_path: Path):
    store = ImageStore(tmp_path)
    yy, xx = np.mgrid[0:1416, 0:1776]
    heat = np.exp(-((xx - 600) ** 2 + (yy - 700) ** 2) / (2 * 300.0**2)).astype(np.float32)
    back = store.get_heatmap(store.put_heatmap(heat))
    assert back.shape == (408, 512) and back.dtype == np.float32
    # the same map sampled at the stored grid: equal to within 8-bit rounding and area averaging
    assert abs(float(back.max()) - 1.0) <= 2 / 255 and float(back.min()) < 0.01
    rows, cols = np.mgrid[0 : back.shape[0], 0 : back.shape[1]]
    weight = back**8  # the centre of the blob, where the map is near its top
    centre = (float((rows * weight).sum() / weight.sum()), float((cols * weight).sum() / weight.sum()))
    assert abs(centre[0] - 700 * 408 / 1416) <= 2 and abs(centre[1] - 600 * 512 / 1776) <= 2
    small = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    np.testing.assert_allclose(store.get_heatmap(store.put_heatmap(small)), small, atol=0.5 / 255 + 1e-6)


def test_an_fsspec_url_works_like_a_folder():
    store = ImageStore("memory://xray-test/images")
    digest = store.put(b"chest x-ray bytes")
    assert store.get(digest) == b"chest x-ray bytes" and store.exists(digest)
    assert store.put(b"chest x-ray bytes") == digest  # stored once
    assert store.fs.ls("xray-test/images/" + digest[:2], detail=False) == [f"/xray-test/images/{digest[:2]}/{digest}"]
    assert store.delete(digest) and not store.exists(digest) and not store.delete(digest)
    with pytest.raises(FileNotFoundError):
        store.get(digest)
    with pytest.raises(ValueError, match="not a SHA-256"):
        store.get("../secrets")


def test_two_processes_share_one_folder(tmp_path: Path):
    """Replicas on a shared folder: what one process stores, another reads and deletes."""
    import subprocess
    import sys

    root = tmp_path / "shared"
    script = (
        "import sys; from xray.records.storage import ImageStore; s = ImageStore(sys.argv[1]); "
        "op = sys.argv[2]; "
        "print(s.put(sys.argv[3].encode()) if op == 'put' else s.get(sys.argv[3]).decode() if op == 'get' "
        "else s.delete(sys.argv[3]))"
    )
    repo = Path(__file__).resolve().parents[1]

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, str(root), *args], cwd=repo, capture_output=True,
                              text=True, check=True)  # fmt: skip
        return done.stdout.strip()

    digest = run("put", "an upload")
    assert digest == sha256_hex(b"an upload") and run("get", digest) == "an upload"
    assert ImageStore(root).get(digest) == b"an upload"  # and this process too
    assert run("delete", digest) == "True" and not ImageStore(root).exists(digest)
