"""What the app opens at start and checks on every request: the database, the image store, the signed-in doctor."""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlmodel import Session

from xray.config import Settings
from xray.errors import NotSignedInError
from xray.records import auth, crud
from xray.records.db import Doctor, init_db, make_engine
from xray.records.storage import ImageStore

logger = logging.getLogger(__name__)


def serving_threads(settings: Settings) -> int:
    """Set the thread pools for serving requests; returns the torch threads per inference.

    - torch (and ONNX Runtime, which takes torch's count): twice the cores' share of each of the
      `inference_concurrency` requests that run at once (at most all cores), unless `XRAY_NUM_THREADS` says
      otherwise. Twice, because a request spends part of its time in Python (the GIL) and in waits, when the other
      request's native code can use both cores: on 2 cores, 2 requests x 2 threads served the 20-doctor load test
      at 12.2-12.8 /s, 2 x 1 at 11.1-11.5 /s (README, Performance; measured on 2 cores only).
    - numpy's BLAS: one thread. Its only work on the request path is small (the input gate's Mahalanobis
      distance), and an idle OpenBLAS worker spins for a while after each call: on 2 cores that stole the CPU from
      the next model run (1776 x 1416 upload: 121 ms p50 with BLAS threads, 76 ms without; README, Performance).
    """
    import os

    import torch
    from threadpoolctl import threadpool_limits

    cores = os.cpu_count() or 1
    threads = settings.num_threads or min(cores, max(1, 2 * cores // settings.inference_concurrency))
    torch.set_num_threads(threads)
    threadpool_limits(limits=1, user_api="blas")  # applies process-wide until changed
    return threads


def open_database(settings: Settings, *, hint_first_account: bool = True) -> Engine:
    """Create the data directory, connect to the database, create missing tables and bootstrap the admin.

    Logs how to create the first account when there is none (unless `hint_first_account` is False).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with Session(engine) as session:
        if auth.bootstrap_admin(session, username=settings.admin_username, password=settings.admin_password):
            logger.info("admin account '%s' is ready (from XRAY_ADMIN_USERNAME/PASSWORD)", settings.admin_username)
        if hint_first_account and crud.count_doctors(session, active_only=True) == 0:
            logger.warning(
                "No doctor account exists yet, so nobody can sign in. Create one with: python -m xray users add NAME"
            )
    return engine


def image_store(settings: Settings) -> ImageStore:
    """The file store for uploads and heatmaps.

    `XRAY_STORAGE_URL` (a folder shared by replicas, or an fsspec URL), else `images/` inside the data directory.
    """
    return ImageStore(settings.storage_url or settings.data_dir / "images")


def require_doctor(session: Session, username: str | None) -> Doctor:
    """The enabled account of the signed-in user.

    Raises:
        NotSignedInError: no user on the request, or the account was disabled since signing in.
    """
    doctor = auth.active_doctor(session, username)
    if doctor is None:
        raise NotSignedInError("Please sign in: this action needs a doctor account that is enabled.")
    return doctor
