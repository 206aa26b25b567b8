"""Content-addressed file store for uploaded images and saved heatmaps, inside the data directory.

A blob is stored once under `<root>/<first two hex digits>/<sha256>`, whatever the number of records that
point at it; records keep the hash. Writes go through a temporary file and an atomic rename, so a crash never
leaves a half-written file under a valid name, and several app processes (replicas) can share one folder: two
writers of the same content write the same bytes under the same name.

The root may also be any fsspec URL (`s3://bucket/prefix` with s3fs installed, `gcs://...`, `memory://...`):
object stores replace an object whole on write, which gives the same guarantee without the rename.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of some bytes, as 64 lower-case hex digits."""
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    """Blobs named by content hash under one folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        self.fs = None
        if "://" in text and not text.startswith("file://"):
            import fsspec

            # e.g. s3://bucket/prefix: the filesystem class comes from the URL's protocol (s3fs for s3://)
            self.fs, self._base = fsspec.core.url_to_fs(text)
            self.root: str | Path = text
        else:
            self.root = Path(text.removeprefix("file://"))

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists); a local store only."""
        if not _SHA256.match(sha256):
            # The hash comes from the database, never from a client; still, never build a path from junk.
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        if self.fs is not None:
            raise TypeError(f"{self.root} is not a local folder; use get/put")
        return self.root / sha256[:2] / sha256

    def _key(self, sha256: str) -> str:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return f"{self._base.rstrip('/')}/{sha256[:2]}/{sha256}"

    def put(self, data: bytes) -> str:
        """Store bytes (once) and return their SHA-256."""
        digest = sha256_hex(data)
        if self.fs is not None:
            key = self._key(digest)
            if not self.fs.exists(key):
                self.fs.pipe_file(key, data)
            return digest
        target = self.path(digest)
        if target.is_file():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, sha256: str) -> bytes:
        """The stored bytes.

        Raises:
            FileNotFoundError: no blob with this hash (e.g. the data folder was moved without its files).
        """
        if self.fs is not None:
            return self.fs.cat_file(self._key(sha256))
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        """Whether a blob with this hash is stored."""
        if self.fs is not None:
            return bool(self.fs.exists(self._key(sha256)))
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        """Remove a blob; returns whether a file was removed. Callers check that no record still uses it."""
        try:
            if self.fs is not None:
                self.fs.rm_file(self._key(sha256))
                return True
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def put_heatmap(self, heatmap: np.ndarray, *, max_side: int = 512) -> str:
        """Store a [0, 1] heatmap as an 8-bit grayscale PNG, at most `max_side` pixels on its long side.

        CAM heatmaps are upsampled from a coarse feature map, so 512 pixels keep all their detail. The map is shrunk
        before anything else touches it (bilinear: a map upsampled from the model's input grid has nothing finer
        for area averaging to catch, and area averaging cost 4 ms per 1776 x 1416 map), and written with PNG's
        fastest compression level: a smooth heatmap gains little from more (`optimize=True` cost about 70 ms per
        1776 x 1416 upload for a few KB).
        """
        import cv2

        from xray.imaging.io import fit_size

        heat = np.asarray(heatmap, dtype=np.float32)
        height, width = heat.shape[:2]
        size = fit_size(width, height, max_side)
        if size != (width, height):
            heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
        image = Image.fromarray(np.uint8(np.round(255 * np.clip(heat, 0.0, 1.0))), mode="L")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return self.put(buffer.getvalue())

    def get_heatmap(self, sha256: str) -> np.ndarray:
        """A stored heatmap as HxW float32 in [0, 1] (at its stored size; resize onto the image to overlay)."""
        with Image.open(io.BytesIO(self.get(sha256))) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
