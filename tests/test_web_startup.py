"""xray.web.startup: the database at start and the signed-in doctor."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from xray.errors import NotSignedInError
from xray.records import auth
from xray.web import startup


def test_require_doctor(session, doctors):
    assert startup.require_doctor(session, "ALICE").username == "alice"
    with pytest.raises(NotSignedInError):
        startup.require_doctor(session, None)
    auth.set_active(session, username="bob", active=False)
    with pytest.raises(NotSignedInError):
        startup.require_doctor(session, "bob")


def test_open_database_creates_data_dir_and_bootstraps_admin(tmp_path, caplog):
    from xray.config import Settings

    settings = Settings(data_dir=tmp_path / "fresh", admin_username=None, admin_password=None)
    with caplog.at_level("WARNING"):
        engine = startup.open_database(settings)
    assert (tmp_path / "fresh" / "xray.db").is_file()
    assert any("python -m xray users add NAME" in r.getMessage() for r in caplog.records)
    engine.dispose()
    settings = Settings(data_dir=tmp_path / "fresh", admin_username="admin", admin_password="from a secret 123")
    engine = startup.open_database(settings)
    with Session(engine) as session:
        assert auth.authenticate(session, username="admin", password="from a secret 123") == "success"
    engine.dispose()
