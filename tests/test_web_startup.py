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


@pytest.mark.parametrize(
    ("cores", "num_threads", "concurrency", "expected"),
    [(2, None, 2, 2), (2, None, 1, 2), (2, None, 4, 1), (2, 3, 2, 3), (16, None, 2, 16), (16, None, 8, 4)],
)
def test_serving_threads_give_twice_each_share_and_keep_blas_to_one_thread(
    monkeypatch, cores, num_threads, concurrency, expected
):
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from xray.config import Settings

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    settings = Settings(num_threads=num_threads, inference_concurrency=concurrency)
    torch_before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the test process's own BLAS threads afterwards
        try:
            threads = startup.serving_threads(settings)
            torch_set = torch.get_num_threads()
            blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        finally:
            torch.set_num_threads(torch_before)
    assert threads == torch_set == expected
    assert blas and set(blas) == {1}  # numpy's BLAS is there, and serves with one thread
