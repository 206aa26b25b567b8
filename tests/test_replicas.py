"""`python app.py` as a Hugging Face Space starts it, and two replicas on one PostgreSQL with one image folder.

Every app here is a real `python app.py` process started with environment variables only, as a Space or a
deployment starts it; the sign-in cookie is carried by hand between processes, as a load balancer would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.app_server import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "person1951_bacteria_4882.jpeg"
PASSWORDS = {"alice": "first long passphrase", "bob": "second long passphrase"}


@contextmanager
def app_process(env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`python app.py` with `env` on top of this environment; yields its base URL once it answers."""
    full = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **env}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise AssertionError(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=5).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"app.py did not answer on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_space_environment_listens_on_all_interfaces_and_warns_about_storage(tmp_path: Path, tiny_model_dir: Path):
    port = free_port()
    env = {
        "SYSTEM": "spaces", "SPACE_ID": "xray-demo/space", "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": str(port), "XRAY_DATA_DIR": str(tmp_path / "data"),
        "XRAY_DEFAULT_MODEL": f"local-dir:{tiny_model_dir}", "XRAY_EXTRA_MODELS": "",
    }  # fmt: skip
    log = tmp_path / "space.log"
    with app_process(env, port, log) as url:
        assert listening_addresses(port) == {"0.0.0.0"}
        assert httpx.get(url + "doctor/", timeout=30).status_code == 200  # the sign-in page; the demo is at /
    text = log.read_text()
    # no /data mounted here and SQLite: every doctor is warned (banner) and the log says it too
    assert "Records and images on this Space are NOT kept" in text and "NOT persistent" in text


def _sign_in(url: str, name: str) -> dict[str, str]:
    response = httpx.post(url + "login", data={"username": name, "password": PASSWORDS[name]}, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.cookies)


def _user(url: str, cookies: dict[str, str]) -> str | None:
    return httpx.get(url + "gradio_api/user", cookies=cookies, timeout=30).json()


def _client(url: str, name: str, root: Path):
    from gradio_client import Client

    return Client(url, auth=(name, PASSWORDS[name]), verbose=False, download_files=str(root / name))


@pytest.mark.postgres
def test_two_replicas_share_sessions_records_and_images(postgres_url: str, tmp_path: Path, tiny_model_dir: Path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from sqlmodel import Session

    from tests.pg_server import fresh_database
    from xray.records import auth
    from xray.records.db import init_db, make_engine

    database, _ = fresh_database(postgres_url)
    engine = make_engine(database)
    init_db(engine)
    with Session(engine) as session:
        for name, password in PASSWORDS.items():
            auth.add_doctor(session, username=name, password=password)
    engine.dispose()
    shared = tmp_path / "shared-images"
    ports = {"a": free_port(), "b": free_port()}

    def env(name: str) -> dict[str, str]:
        return {
            "XRAY_DATABASE_URL": database, "XRAY_STORAGE_URL": str(shared), "XRAY_PUBLIC_DEMO": "0",
            "XRAY_DATA_DIR": str(tmp_path / f"data-{name}"), "XRAY_HOST": "127.0.0.1", "XRAY_PORT": str(ports[name]),
            "XRAY_DEFAULT_MODEL": f"local-dir:{tiny_model_dir}", "XRAY_EXTRA_MODELS": "",
        }  # fmt: skip

    with app_process(env("b"), ports["b"], tmp_path / "b.log") as b:
        with app_process(env("a"), ports["a"], tmp_path / "a.log") as a:
            cookies = _sign_in(a, "alice")
            assert _user(a, cookies) == "alice" and _user(b, cookies) == "alice"  # B accepts A's session
            alice_a = _client(a, "alice", tmp_path)
            model = f"local-dir:{tiny_model_dir}"
            *_, record_id = alice_a.predict(handle_file(str(SAMPLE)), "Replica Patient", "2024-05-01", model,
                                            "gradcam", 0.4, api_name="/diagnose")  # fmt: skip
            record_id = int(record_id)
        # A is gone: B alone serves the record made through A, with its image from the shared folder
        assert _user(b, cookies) == "alice"
        alice_b = _client(b, "alice", tmp_path)
        table, _caption, _page = alice_b.predict("", None, None, "Any", 1, api_name="/history")
        assert record_id in [row[0] for row in table["data"]]
        details, image, *_ = alice_b.predict(record_id, 0.4, api_name="/open_record")
        assert "Replica Patient" in details and image
        bob_b = _client(b, "bob", tmp_path)
        table, *_ = bob_b.predict("", None, None, "Any", 1, api_name="/history")
        assert record_id not in [row[0] for row in table["data"]]
        with pytest.raises(AppError, match=f"Record {record_id} was not found"):
            bob_b.predict(record_id, 0.4, api_name="/open_record")
        with pytest.raises(AppError, match=f"Record {record_id} was not found"):
            bob_b.predict(record_id, api_name="/delete_record")
        # A restarts: the same cookie still works (0 sign-outs caused by a restart)
        with app_process(env("a"), ports["a"], tmp_path / "a2.log") as a:
            assert _user(a, cookies) == "alice"
            message, *_ = alice_b.predict(record_id, api_name="/delete_record")
            assert f"Deleted record {record_id}" in message or "deleted" in message.lower()
            table, *_ = _client(a, "alice", tmp_path).predict("", None, None, "Any", 1, api_name="/history")
            assert record_id not in [row[0] for row in table["data"]]
            # log out through B: the cookie stops working on A too
            assert httpx.get(b + "logout", cookies=cookies, timeout=30).status_code == 302
            assert _user(a, cookies) is None and _user(b, cookies) is None
            assert httpx.get(a + "gradio_api/info", cookies=cookies, timeout=30).status_code == 401
