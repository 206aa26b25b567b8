"""Content-addressed file store for uploaded images and saved heatmaps, inside the data directory.

A blob is stored once under `<root>/<first two hex digits>/<sha256>`, whatever the number of records that
point at it; records keep the hash. Writes go through a temporary file and an atomic rename, so a crash never
leaves a half-written file under a valid name.
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
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (whether or not it exists)."""
        if not _SHA256.match(sha256):
            # The hash comes from the database, never from a client; still, never build a path from junk.
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store bytes (once) and return their SHA-256."""
        digest = sha256_hex(data)
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
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        """Whether a blob with this hash is stored."""
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        """Remove a blob; returns whether a file was removed. Callers check that no record still uses it."""
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def put_heatmap(self, heatmap: np.ndarray, *, max_side: int = 512) -> str:
        """Store a [0, 1] heatmap as an 8-bit grayscale PNG, at most `max_side` pixels on its long side.

        CAM heatmaps are upsampled from a coarse feature map, so 512 pixels keep all their detail.
        """
        image = Image.fromarray(np.uint8(np.round(255 * np.clip(heatmap, 0.0, 1.0))), mode="L")
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return self.put(buffer.getvalue())

    def get_heatmap(self, sha256: str) -> np.ndarray:
        """A stored heatmap as HxW float32 in [0, 1] (at its stored size; resize onto the image to overlay)."""
        with Image.open(io.BytesIO(self.get(sha256))) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
