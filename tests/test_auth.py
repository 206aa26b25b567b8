from __future__ import annotations

import io
import logging
import sys
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from xray.errors import AccountError
from xray.records import auth
from xray.records.db import SignInEvent, init_db, make_engine, utcnow

PASSWORD = "correct horse battery"


@pytest.fixture
def engine(tmp_path):
    """SQLite only: the sign-in queries are covered on PostgreSQL by test_crud, and Argon2 is slow on purpose."""
    engine = make_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    with Session(engine) as session:
        yield session


def test_password_hash_is_argon2id_salted_and_verifies():
    first, second = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert first.startswith("$argon2id$") and PASSWORD not in first
    assert first != second  # salted
    assert auth.verify_password(PASSWORD, first) == (True, None)
    assert auth.verify_password("wrong password!", first)[0] is False
    assert auth.verify_password(PASSWORD, "not a hash")[0] is False


@pytest.mark.parametrize("name", ["a", "-alice", "al ice", "x" * 65, "alice!", ""])
def test_bad_usernames_are_refused(name):
    with pytest.raises(AccountError, match="Invalid user name"):
        auth.check_username(name)


def test_usernames_are_normalised():
    assert auth.check_username("  Dr.House@ER ") == "dr.house@er"


@pytest.mark.parametrize(
    ("password", "message"),
    [("short", "too short"), ("x" * 1025, "too long"), ("my-alice-password", "must not contain the user name")],
)
def test_weak_passwords_are_refused(password, message):
    with pytest.raises(AccountError, match=message):
        auth.check_password(password, username="alice")


def test_add_doctor_stores_only_a_hash_and_refuses_duplicates(session):
    doctor = auth.add_doctor(session, username="Alice", password=PASSWORD, display_name="Dr Alice")
    assert doctor.username == "alice" and doctor.display_name == "Dr Alice"
    assert doctor.password_hash.startswith("$argon2id$")
    with pytest.raises(AccountError, match="already exists"):
        auth.add_doctor(session, username="ALICE", password=PASSWORD)
    with pytest.raises(AccountError, match="password or a Hugging Face"):
        auth.add_doctor(session, username="nopass", password=None)
    hub = auth.add_doctor(session, username="bob", password=None, hf_username="Bob-HF")
    assert hub.password_hash is None and hub.hf_username == "bob-hf"
    with pytest.raises(AccountError, match="already linked"):
        auth.add_doctor(session, username="bob2", password=None, hf_username="bob-hf")


def test_sign_in_outcomes_are_recorded(session):
    auth.add_doctor(session, username="alice", password=PASSWORD)
    assert auth.authenticate(session, username=" Alice", password=PASSWORD, address="1.1.1.1") == "success"
    assert auth.authenticate(session, username="alice", password="wrong password", address="1.1.1.1") == (
        "bad_credentials"
    )
    assert auth.authenticate(session, username="ghost", password=PASSWORD, address="1.1.1.1") == "bad_credentials"
    auth.set_active(session, username="alice", active=False)
    assert auth.authenticate(session, username="alice", password=PASSWORD, address="1.1.1.1") == "disabled"
    assert auth.active_doctor(session, "alice") is None
    auth.set_active(session, username="alice", active=True)
    assert auth.active_doctor(session, "ALICE").username == "alice"
    outcomes = [(e.username, e.outcome) for e in session.exec(select(SignInEvent).order_by(SignInEvent.id))]
    assert outcomes == [
        ("alice", "success"),
        ("alice", "bad_credentials"),
        ("ghost", "bad_credentials"),
        ("alice", "disabled"),
    ]


def test_username_is_throttled_after_repeated_failures_even_with_the_right_password(session, caplog):
    auth.add_doctor(session, username="alice", password=PASSWORD)
    policy = auth.ThrottlePolicy(max_failures_per_username=3, max_failures_per_address=100)
    with caplog.at_level(logging.WARNING, logger="xray.records.auth"):
        for i in range(3):
            assert auth.authenticate(
                session, username="alice", password="bad", address=f"10.0.0.{i}", policy=policy
            ) == ("bad_credentials")
        assert auth.authenticate(session, username="alice", password=PASSWORD, address="10.0.0.9", policy=policy) == (
            "throttled"
        )
    assert any("throttled" in r.getMessage() and "alice" in r.getMessage() for r in caplog.records)
    assert any("bad_credentials" in r.getMessage() for r in caplog.records)
    # Other accounts are not affected.
    auth.add_doctor(session, username="bob", password=PASSWORD)
    assert auth.authenticate(session, username="bob", password=PASSWORD, address="10.0.0.9", policy=policy) == "success"


def test_throttle_ends_when_failures_leave_the_window(session):
    auth.add_doctor(session, username="alice", password=PASSWORD)
    policy = auth.ThrottlePolicy(max_failures_per_username=2, window=timedelta(minutes=15))
    for minutes in (20, 16):  # both older than the window
        session.add(
            SignInEvent(
                username="alice", address="x", outcome="bad_credentials", at=utcnow() - timedelta(minutes=minutes)
            )
        )
    session.commit()
    assert auth.authenticate(session, username="alice", password=PASSWORD, policy=policy) == "success"


def test_success_resets_the_username_count(session):
    auth.add_doctor(session, username="alice", password=PASSWORD)
    policy = auth.ThrottlePolicy(max_failures_per_username=3, max_failures_per_address=100)
    for _ in range(2):
        auth.authenticate(session, username="alice", password="bad", policy=policy)
    assert auth.authenticate(session, username="alice", password=PASSWORD, policy=policy) == "success"
    for _ in range(2):
        auth.authenticate(session, username="alice", password="bad", policy=policy)
    assert auth.authenticate(session, username="alice", password=PASSWORD, policy=policy) == "success"


def test_address_is_throttled_across_usernames(session):
    auth.add_doctor(session, username="alice", password=PASSWORD)
    policy = auth.ThrottlePolicy(max_failures_per_username=100, max_failures_per_address=4)
    for i in range(4):
        auth.authenticate(session, username=f"guess{i}", password="bad", address="6.6.6.6", policy=policy)
    assert auth.authenticate(session, username="alice", password=PASSWORD, address="6.6.6.6", policy=policy) == (
        "throttled"
    )
    assert auth.authenticate(session, username="alice", password=PASSWORD, address="7.7.7.7", policy=policy) == (
        "success"
    )


def test_password_checker_reads_the_client_address_from_context(engine):
    with Session(engine) as session:
        auth.add_doctor(session, username="alice", password=PASSWORD)
    check = auth.make_password_checker(engine)
    token = auth.client_address.set("192.0.2.7")
    try:
        assert check("alice", PASSWORD) is True
        assert check("alice", "nope") is False
    finally:
        auth.client_address.reset(token)
    with Session(engine) as session:
        assert {e.address for e in session.exec(select(SignInEvent))} == {"192.0.2.7"}


def test_address_from_scope_trusts_forwarded_for_only_when_asked():
    scope = {"client": ("10.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"203.0.113.5, 10.0.0.1")]}
    assert auth.address_from_scope(scope) == "10.0.0.1"
    assert auth.address_from_scope(scope, trust_forwarded=True) == "203.0.113.5"
    assert auth.address_from_scope({"headers": []}) == ""


def test_bootstrap_admin_creates_then_rotates_password(session):
    assert auth.bootstrap_admin(session, username=None, password=None) is None
    assert auth.bootstrap_admin(session, username="admin", password=None) is None
    admin = auth.bootstrap_admin(session, username="admin", password=PASSWORD)
    assert auth.authenticate(session, username="admin", password=PASSWORD) == "success"
    first_hash = admin.password_hash
    assert auth.bootstrap_admin(session, username="admin", password=PASSWORD).password_hash == first_hash
    auth.bootstrap_admin(session, username="admin", password="a brand new secret")
    assert auth.authenticate(session, username="admin", password=PASSWORD) == "bad_credentials"
    assert auth.authenticate(session, username="admin", password="a brand new secret") == "success"


def test_hub_user_maps_to_enabled_doctor(session):
    auth.add_doctor(session, username="carol", password=None, hf_username="CarolHF")
    assert auth.doctor_for_hub_user(session, "carolhf").username == "carol"
    assert auth.doctor_for_hub_user(session, "someone") is None
    assert auth.doctor_for_hub_user(session, None) is None
    auth.set_active(session, username="carol", active=False)
    assert auth.doctor_for_hub_user(session, "CarolHF") is None


def test_reset_password_and_unknown_accounts(session):
    auth.add_doctor(session, username="alice", password=PASSWORD)
    auth.reset_password(session, username="alice", password="another good one")
    assert auth.authenticate(session, username="alice", password="another good one") == "success"
    with pytest.raises(AccountError, match="No user named 'ghost'"):
        auth.reset_password(session, username="ghost", password="another good one")
    with pytest.raises(AccountError, match="No user named"):
        auth.set_active(session, username="ghost", active=False)


# ------------------------------------------------------------------------------------- the users CLI


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `python -m xray ...` in-process on a fresh data directory; returns (exit code, stdout, stderr)."""
    from xray.__main__ import main
    from xray.config import get_settings

    monkeypatch.setenv("XRAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("XRAY_DATABASE_URL", raising=False)
    get_settings.cache_clear()

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        try:
            code = main(list(argv))
        except SystemExit as exc:  # raise SystemExit("message") prints the message and exits with 1
            if isinstance(exc.code, str):
                err.write(exc.code)
                code = 1
            else:
                code = exc.code or 0
        return code, out.getvalue(), err.getvalue()

    yield run
    get_settings.cache_clear()


def test_cli_add_list_disable_reset(cli, tmp_path):
    assert cli("users", "list")[1].startswith("No accounts yet")
    code, out, _ = cli("users", "add", "Dr.Who", "--display-name", "Dr Who", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and "Created doctor account 'dr.who'" in out
    assert (tmp_path / "data" / "xray.db").is_file()
    code, _, err = cli("users", "add", "dr.who", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 2 and "already exists" in err
    code, _, err = cli("users", "add", "shorty", "--password-stdin", stdin="short\n")
    assert code == 2 and "too short" in err
    code, out, _ = cli("users", "list")
    assert "dr.who" in out and "active" in out and "Dr Who" in out and "shorty" not in out
    assert cli("users", "disable", "dr.who")[1].strip() == "Account 'dr.who' disabled."
    assert "disabled" in cli("users", "list")[1]
    code, out, _ = cli("users", "reset-password", "dr.who", "--password-stdin", stdin="a fresh passphrase\n")
    assert code == 0 and "changed" in out
    code, _, err = cli("users", "reset-password", "ghost", "--password-stdin", stdin="a fresh passphrase\n")
    assert code == 2 and "No user named 'ghost'" in err


def test_cli_refuses_to_prompt_without_a_terminal(cli):
    code, _, err = cli("users", "add", "alice", stdin="")
    assert code != 0 and "--password-stdin" in err


def _doctor(session, name="alice"):
    return auth.add_doctor(session, username=name, password=PASSWORD)


def test_sessions_live_in_the_database_hashed_with_expiry(engine, session):
    from xray.records.db import SignInSession

    _doctor(session)
    token = auth.start_session(session, username="alice")
    assert auth.session_username(session, token=token) == "alice"
    rows = session.exec(select(SignInSession)).all()
    assert len(rows) == 1 and token not in rows[0].token_sha256 and len(rows[0].token_sha256) == 64
    # another engine on the same file (another process, a restart) accepts the same token
    other = make_engine(str(engine.url))
    with Session(other) as fresh:
        assert auth.session_username(fresh, token=token) == "alice"
    other.dispose()
    assert auth.session_username(session, token="forged") is None and auth.session_username(session, token=None) is None
    expired = auth.start_session(session, username="alice", hours=-1)
    assert auth.session_username(session, token=expired) is None
    with pytest.raises(AccountError, match="No enabled doctor account 'bob'"):
        auth.start_session(session, username="bob")


def test_sign_out_disable_and_password_reset_end_sessions(session):
    _doctor(session)
    _doctor(session, "bob")
    first, second = auth.start_session(session, username="alice"), auth.start_session(session, username="alice")
    bobs = auth.start_session(session, username="bob")
    assert auth.end_session(session, token=first) and not auth.end_session(session, token=first)
    assert auth.session_username(session, token=first) is None and auth.session_username(session, token=second)
    auth.reset_password(session, username="alice", password="another long secret")
    assert auth.session_username(session, token=second) is None
    auth.set_active(session, username="bob", active=False)
    assert auth.session_username(session, token=bobs) is None
    auth.set_active(session, username="bob", active=True)
    assert auth.session_username(session, token=bobs) is None  # re-enabling does not revive old sessions


def test_database_tokens_behave_like_gradios_token_dict(engine, session):
    _doctor(session)
    tokens = auth.DatabaseTokens(engine)
    tokens["tok-1"] = "alice"  # what Gradio's /login does
    assert tokens.get("tok-1") == "alice" and "tok-1" in tokens and len(tokens) == 1
    assert tokens.get("nope") is None and tokens.get(None) is None and list(tokens) == []
    assert auth.DatabaseTokens(engine).get("tok-1") == "alice"  # a new process reads the same table
    del tokens["tok-1"]
    assert tokens.get("tok-1") is None and len(tokens) == 0
    with pytest.raises(KeyError):
        del tokens["tok-1"]
    assert auth.session_cookie_id("sqlite:///a.db") == auth.session_cookie_id("sqlite:///a.db")
    assert auth.session_cookie_id("sqlite:///a.db") != auth.session_cookie_id("sqlite:///b.db")
