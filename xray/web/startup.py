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
