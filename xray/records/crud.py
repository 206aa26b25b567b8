"""Database reads and writes, one function per operation, all keyword-only and taking a `Session`.

Ownership is enforced in the SQL itself: every read, update and delete of a record carries
`WHERE record.doctor_id = <the doctor's id>`, so a record id belonging to another doctor behaves exactly like
one that does not exist. Functions commit their own writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlmodel import Session, col, select

from xray.records.db import Doctor, Record, SignInEvent, SignInSession, utcnow

#: Record columns a caller may set at creation (the owner and id are set here, never by the caller).
_RECORD_FIELDS = frozenset(Record.model_fields) - {"id", "doctor_id", "created_at", "updated_at"}


# ---------------------------------------------------------------------------------------------- doctors


def create_doctor(
    session: Session,
    *,
    username: str,
    display_name: str,
    password_hash: str | None,
    hf_username: str | None = None,
) -> Doctor:
    """Insert a doctor account (the caller has validated and normalised the names)."""
    doctor = Doctor(username=username, display_name=display_name, password_hash=password_hash, hf_username=hf_username)
    session.add(doctor)
    session.commit()
    session.refresh(doctor)
    return doctor


def get_doctor(session: Session, *, username: str) -> Doctor | None:
    """The account with this (normalised) sign-in name, or None."""
    return session.exec(select(Doctor).where(Doctor.username == username)).first()


def get_doctor_by_hf_username(session: Session, *, hf_username: str) -> Doctor | None:
    """The account linked to this (lower-case) Hugging Face user name, or None."""
    return session.exec(select(Doctor).where(Doctor.hf_username == hf_username)).first()


def list_doctors(session: Session) -> list[Doctor]:
    """All accounts, by sign-in name."""
    return list(session.exec(select(Doctor).order_by(Doctor.username)))


def count_doctors(session: Session, *, active_only: bool = False) -> int:
    """Number of accounts (only enabled ones when `active_only`)."""
    statement = select(func.count()).select_from(Doctor)
    if active_only:
        statement = statement.where(Doctor.is_active == True)  # noqa: E712 (SQL expression)
    return int(session.exec(statement).one())


def update_doctor(session: Session, *, username: str, **values: Any) -> Doctor | None:
    """Set account fields (password_hash, is_active, display_name, hf_username); None when unknown."""
    allowed = {"password_hash", "is_active", "display_name", "hf_username"}
    unknown = set(values) - allowed
    if unknown:
        raise TypeError(f"cannot update doctor fields {sorted(unknown)}")
    doctor = get_doctor(session, username=username)
    if doctor is None:
        return None
    for key, value in values.items():
        setattr(doctor, key, value)
    doctor.updated_at = utcnow()
    session.add(doctor)
    session.commit()
    session.refresh(doctor)
    return doctor


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordFilter:
    """History filters; None means "any".

    Attributes:
        patient: case-insensitive substring of the patient name or ID.
        date_from: first exam date included.
        date_to: last exam date included.
        predicted_label: exact predicted class.
    """

    patient: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    predicted_label: str | None = None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _owned(statement: Any, doctor: Doctor) -> Any:
    if doctor.id is None:
        raise ValueError("doctor has no id (not saved)")
    return statement.where(Record.doctor_id == doctor.id)


def _filtered(statement: Any, filters: RecordFilter | None) -> Any:
    if filters is None:
        return statement
    if filters.patient:
        statement = statement.where(col(Record.patient_name).ilike(f"%{_escape_like(filters.patient)}%", escape="\\"))
    if filters.date_from is not None:
        statement = statement.where(Record.exam_date >= filters.date_from)
    if filters.date_to is not None:
        statement = statement.where(Record.exam_date <= filters.date_to)
    if filters.predicted_label:
        statement = statement.where(Record.predicted_label == filters.predicted_label)
    return statement


def create_record(session: Session, *, doctor: Doctor, **values: Any) -> Record:
    """Save a prediction for `doctor` (the owner always comes from this argument, never from `values`)."""
    unknown = set(values) - _RECORD_FIELDS
    if unknown:
        raise TypeError(f"cannot set record fields {sorted(unknown)}")
    record = Record(**values, doctor_id=_owner_id(doctor))
    session.add(record)
    session.commit()
    session.refresh(record)
    return record


def _owner_id(doctor: Doctor) -> int:
    if doctor.id is None:
        raise ValueError("doctor has no id (not saved)")
    return doctor.id


def get_record(session: Session, *, doctor: Doctor, record_id: int) -> Record | None:
    """The doctor's record with this id, or None (also when it belongs to another doctor)."""
    return session.exec(_owned(select(Record).where(Record.id == record_id), doctor)).first()


def list_records(
    session: Session,
    *,
    doctor: Doctor,
    filters: RecordFilter | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[Record]:
    """The doctor's records matching `filters`, newest first."""
    statement = _filtered(_owned(select(Record), doctor), filters)
    statement = statement.order_by(col(Record.created_at).desc(), col(Record.id).desc()).offset(offset)
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.exec(statement))


def count_records(session: Session, *, doctor: Doctor, filters: RecordFilter | None = None) -> int:
    """How many of the doctor's records match `filters`."""
    statement = _filtered(_owned(select(func.count()).select_from(Record), doctor), filters)
    return int(session.exec(statement).one())


def predicted_labels(session: Session, *, doctor: Doctor) -> list[str]:
    """The distinct predicted classes among the doctor's records (for the History filter)."""
    statement = _owned(select(Record.predicted_label).distinct(), doctor).order_by(Record.predicted_label)
    return [str(label) for label in session.exec(statement)]


def _update_owned(session: Session, *, doctor: Doctor, record_id: int, values: dict[str, Any]) -> Record | None:
    statement = _owned(update(Record).where(col(Record.id) == record_id), doctor).values(**values)
    result = session.exec(statement)
    session.commit()
    if result.rowcount == 0:
        return None
    record = get_record(session, doctor=doctor, record_id=record_id)
    if record is not None:
        session.refresh(record)
    return record


def update_record_patient(
    session: Session, *, doctor: Doctor, record_id: int, patient_name: str, exam_date: date
) -> Record | None:
    """Correct the patient fields of the doctor's record; None when the doctor has no such record."""
    values = {"patient_name": patient_name, "exam_date": exam_date, "updated_at": utcnow()}
    return _update_owned(session, doctor=doctor, record_id=record_id, values=values)


def set_final_read(
    session: Session, *, doctor: Doctor, record_id: int, final_read: str | None, final_note: str | None
) -> Record | None:
    """Set (or clear, with None) the doctor's own final read; the model's output is left as it was."""
    values = {
        "final_read": final_read,
        "final_note": final_note,
        "final_read_at": utcnow() if final_read is not None else None,
        "updated_at": utcnow(),
    }
    return _update_owned(session, doctor=doctor, record_id=record_id, values=values)


def list_final_reads(session: Session, *, doctor: Doctor) -> list[Record]:
    """The doctor's records that carry a final read, newest read first."""
    statement = _owned(select(Record).where(col(Record.final_read).is_not(None)), doctor)
    return list(session.exec(statement.order_by(col(Record.final_read_at).desc(), col(Record.id).desc())))


def delete_record(session: Session, *, doctor: Doctor, record_id: int) -> Record | None:
    """Delete the doctor's record; returns the deleted row (detached) or None when there was none."""
    record = get_record(session, doctor=doctor, record_id=record_id)
    if record is None:
        return None
    session.expunge(record)
    result = session.exec(_owned(delete(Record).where(col(Record.id) == record_id), doctor))
    session.commit()
    return record if result.rowcount else None


def count_blob_references(session: Session, *, sha256: str) -> int:
    """How many records (of any doctor) use this stored blob as image or heatmap; 0 means it can be removed."""
    statement = (
        select(func.count())
        .select_from(Record)
        .where(or_(Record.image_sha256 == sha256, Record.heatmap_sha256 == sha256))
    )
    return int(session.exec(statement).one())


# ----------------------------------------------------------------------------------------- sign-in events


def add_sign_in_event(session: Session, *, username: str, address: str, outcome: str) -> SignInEvent:
    """Log one sign-in attempt."""
    event = SignInEvent(username=username[:200], address=address[:100], outcome=outcome)
    session.add(event)
    session.commit()
    return event


def count_sign_in_events(
    session: Session,
    *,
    outcomes: Sequence[str],
    since: datetime,
    username: str | None = None,
    address: str | None = None,
) -> int:
    """Attempts with one of `outcomes` since a time, for one username and/or one address."""
    statement = (
        select(func.count())
        .select_from(SignInEvent)
        .where(col(SignInEvent.outcome).in_(list(outcomes)), SignInEvent.at >= since)
    )
    if username is not None:
        statement = statement.where(SignInEvent.username == username)
    if address is not None:
        statement = statement.where(SignInEvent.address == address)
    return int(session.exec(statement).one())


def last_sign_in_event(session: Session, *, username: str, outcome: str) -> SignInEvent | None:
    """The latest attempt for a username with this outcome, or None."""
    statement = (
        select(SignInEvent)
        .where(SignInEvent.username == username, SignInEvent.outcome == outcome)
        .order_by(col(SignInEvent.at).desc(), col(SignInEvent.id).desc())
    )
    return session.exec(statement).first()


# ---------------------------------------------------------------------------------------------- sign-in sessions


def create_sign_in_session(
    session: Session, *, doctor: Doctor, token_sha256: str, expires_at: datetime
) -> SignInSession:
    """Store a new signed-in browser (by the hash of its token)."""
    row = SignInSession(token_sha256=token_sha256, doctor_id=_owner_id(doctor), expires_at=expires_at)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def active_session_doctor(session: Session, *, token_sha256: str, now: datetime) -> Doctor | None:
    """The enabled doctor of an unexpired, unrevoked session with this token hash, or None."""
    statement = (
        select(Doctor)
        .join(SignInSession, SignInSession.doctor_id == Doctor.id)
        .where(SignInSession.token_sha256 == token_sha256)
        .where(SignInSession.revoked_at.is_(None))  # type: ignore[union-attr]
        .where(SignInSession.expires_at > now)
        .where(Doctor.is_active == True)  # noqa: E712 (SQL expression)
    )
    return session.exec(statement).first()


def revoke_sign_in_sessions(
    session: Session, *, now: datetime, token_sha256: str | None = None, doctor: Doctor | None = None
) -> int:
    """Revoke one session (by token hash) or every session of a doctor; returns how many were revoked."""
    if token_sha256 is None and doctor is None:
        raise ValueError("give a token hash or a doctor")
    statement = select(SignInSession).where(SignInSession.revoked_at.is_(None))  # type: ignore[union-attr]
    if token_sha256 is not None:
        statement = statement.where(SignInSession.token_sha256 == token_sha256)
    if doctor is not None:
        statement = statement.where(SignInSession.doctor_id == _owner_id(doctor))
    rows = list(session.exec(statement))
    for row in rows:
        row.revoked_at = now
        session.add(row)
    session.commit()
    return len(rows)


def count_active_sessions(session: Session, *, now: datetime) -> int:
    """How many sessions are signed in now (unexpired, unrevoked)."""
    statement = (
        select(func.count())
        .select_from(SignInSession)
        .where(SignInSession.revoked_at.is_(None))  # type: ignore[union-attr]
        .where(SignInSession.expires_at > now)
    )
    return int(session.exec(statement).one())

