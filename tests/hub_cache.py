"""Build a real Hugging Face hub cache folder offline, in the layout huggingface_hub itself writes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def populate_hf_cache(cache_dir: Path, repo_id: str, model_dir: Path, *, commit: str | None = None) -> str:
    """Place a model folder into `cache_dir` as `models--org--name` with blobs, a snapshot and refs/main.

    Returns the commit hash used for the snapshot.
    """
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo_root = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_root / "snapshots" / commit
    blobs = repo_root / "blobs"
    snapshot.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if not file.is_file():
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blobs / digest)
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    (repo_root / "refs").mkdir(exist_ok=True)
    (repo_root / "refs" / "main").write_text(commit)
    return commit
