from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlmodel import Session, select

from xray.records import crud
from xray.records.db import Record, SignInEvent, utcnow


def _values(patient: str = "Jane Roe", exam: date = date(2024, 5, 1), label: str = "PNEUMONIA", **extra) -> dict:
    values = dict(
        patient_name=patient,
        exam_date=exam,
        image_sha256=extra.pop("sha", "a" * 64),
        model_name="local-dir:/m",
        model_version="abc",
        label_names=["NORMAL", "PNEUMONIA"],
        probabilities={"NORMAL": 0.2, "PNEUMONIA": 0.8} if label == "PNEUMONIA" else {"NORMAL": 0.9, "PNEUMONIA": 0.1},
        predicted_label=label,
    )
    values.update(extra)
    return values


@pytest.fixture
def doctors(session):
    alice = crud.create_doctor(session, username="alice", display_name="Alice", password_hash="h1")
    bob = crud.create_doctor(session, username="bob", display_name="Bob", password_hash="h2")
    return alice, bob


def test_doctor_lookup_and_update(session, doctors):
    alice, _ = doctors
    assert crud.get_doctor(session, username="alice").id == alice.id
    assert crud.get_doctor(session, username="nobody") is None
    assert [d.username for d in crud.list_doctors(session)] == ["alice", "bob"]
    updated = crud.update_doctor(session, username="alice", is_active=False, hf_username="alice-hf")
    assert updated.is_active is False
    assert crud.get_doctor_by_hf_username(session, hf_username="alice-hf").username == "alice"
    assert crud.count_doctors(session) == 2
    assert crud.count_doctors(session, active_only=True) == 1
    assert crud.update_doctor(session, username="ghost", is_active=False) is None
    with pytest.raises(TypeError):
        crud.update_doctor(session, username="alice", id=5)


def test_records_are_invisible_to_other_doctors(session, doctors):
    alice, bob = doctors
    record = crud.create_record(session, doctor=alice, **_values())
    assert record.doctor_id == alice.id
    assert crud.get_record(session, doctor=alice, record_id=record.id).patient_name == "Jane Roe"
    assert crud.get_record(session, doctor=bob, record_id=record.id) is None
    assert crud.list_records(session, doctor=bob) == []
    assert crud.count_records(session, doctor=bob) == 0
    assert crud.predicted_labels(session, doctor=bob) == []
    assert crud.predicted_labels(session, doctor=alice) == ["PNEUMONIA"]


def test_other_doctor_cannot_update_or_delete(session, doctors):
    alice, bob = doctors
    record = crud.create_record(session, doctor=alice, **_values())
    assert crud.update_record_patient(
        session, doctor=bob, record_id=record.id, patient_name="Hacked", exam_date=date(2020, 1, 1)
    ) is None  # fmt: skip
    assert crud.set_final_read(session, doctor=bob, record_id=record.id, final_read="NORMAL", final_note=None) is None
    assert crud.delete_record(session, doctor=bob, record_id=record.id) is None
    session.expire_all()
    kept = crud.get_record(session, doctor=alice, record_id=record.id)
    assert kept.patient_name == "Jane Roe" and kept.final_read is None


def test_owner_can_edit_patient_fields_but_not_the_model_output(session, doctors):
    alice, _ = doctors
    record = crud.create_record(session, doctor=alice, **_values())
    edited = crud.update_record_patient(
        session, doctor=alice, record_id=record.id, patient_name="Jane Q. Roe", exam_date=date(2024, 4, 30)
    )
    assert (edited.patient_name, edited.exam_date) == ("Jane Q. Roe", date(2024, 4, 30))
    assert edited.updated_at is not None
    assert edited.probabilities == {"NORMAL": 0.2, "PNEUMONIA": 0.8} and edited.predicted_label == "PNEUMONIA"


def test_final_read_is_kept_apart_from_the_prediction(session, doctors):
    alice, _ = doctors
    record = crud.create_record(session, doctor=alice, **_values())
    read = crud.set_final_read(session, doctor=alice, record_id=record.id, final_read="NORMAL", final_note="old scar")
    assert (read.final_read, read.final_note) == ("NORMAL", "old scar")
    assert read.final_read_at is not None
    assert read.predicted_label == "PNEUMONIA"
    cleared = crud.set_final_read(session, doctor=alice, record_id=record.id, final_read=None, final_note=None)
    assert cleared.final_read is None and cleared.final_read_at is None


def test_create_record_never_takes_the_owner_from_values(session, doctors):
    alice, bob = doctors
    with pytest.raises(TypeError):
        crud.create_record(session, doctor=alice, doctor_id=bob.id, **_values())
    with pytest.raises(TypeError):
        crud.create_record(session, doctor=alice, id=77, **_values())


def test_delete_returns_the_row_and_removes_it(session, doctors):
    alice, _ = doctors
    record = crud.create_record(session, doctor=alice, **_values())
    deleted = crud.delete_record(session, doctor=alice, record_id=record.id)
    assert deleted.id == record.id and deleted.image_sha256 == "a" * 64
    assert crud.get_record(session, doctor=alice, record_id=record.id) is None
    assert crud.delete_record(session, doctor=alice, record_id=record.id) is None


def test_filters_order_and_pages(session, doctors):
    alice, bob = doctors
    made = [
        crud.create_record(session, doctor=alice, **_values("Ann Smith", date(2024, 1, 10), "NORMAL")),
        crud.create_record(session, doctor=alice, **_values("ann smithers", date(2024, 2, 10), "PNEUMONIA")),
        crud.create_record(session, doctor=alice, **_values("Bert 100%", date(2024, 3, 10), "PNEUMONIA")),
        crud.create_record(session, doctor=alice, **_values("Bert_1", date(2024, 4, 10), "NORMAL")),
    ]
    crud.create_record(session, doctor=bob, **_values("Ann Smith", date(2024, 1, 10), "NORMAL"))
    ids = [r.id for r in made]

    def listed(**filters):
        return [r.id for r in crud.list_records(session, doctor=alice, filters=crud.RecordFilter(**filters))]

    assert listed() == ids[::-1]  # newest first
    assert listed(patient="ANN SMITH") == [ids[1], ids[0]]  # case-insensitive substring
    assert listed(patient="100%") == [ids[2]]  # LIKE wildcards are literal
    assert listed(patient="t_") == [ids[3]]
    assert listed(date_from=date(2024, 2, 10), date_to=date(2024, 3, 10)) == [ids[2], ids[1]]  # inclusive
    assert listed(predicted_label="NORMAL") == [ids[3], ids[0]]
    assert listed(patient="ann", predicted_label="PNEUMONIA") == [ids[1]]
    assert crud.count_records(session, doctor=alice, filters=crud.RecordFilter(patient="ann")) == 2
    page2 = crud.list_records(session, doctor=alice, offset=2, limit=2)
    assert [r.id for r in page2] == [ids[1], ids[0]]


def test_blob_references_count_every_doctor(session, doctors):
    alice, bob = doctors
    crud.create_record(session, doctor=alice, **_values(sha="b" * 64, heatmap_sha256="c" * 64))
    crud.create_record(session, doctor=bob, **_values(sha="b" * 64))
    assert crud.count_blob_references(session, sha256="b" * 64) == 2
    assert crud.count_blob_references(session, sha256="c" * 64) == 1
    assert crud.count_blob_references(session, sha256="d" * 64) == 0


def test_sign_in_events_are_counted_by_name_address_and_time(session):
    crud.add_sign_in_event(session, username="alice", address="1.2.3.4", outcome="bad_credentials")
    crud.add_sign_in_event(session, username="alice", address="5.6.7.8", outcome="bad_credentials")
    crud.add_sign_in_event(session, username="bob", address="1.2.3.4", outcome="success")
    session.add(
        SignInEvent(username="alice", address="1.2.3.4", outcome="bad_credentials", at=utcnow() - timedelta(hours=2))
    )
    session.commit()
    since = utcnow() - timedelta(minutes=15)
    failures = ["bad_credentials"]
    assert crud.count_sign_in_events(session, outcomes=failures, since=since, username="alice") == 2
    assert crud.count_sign_in_events(session, outcomes=failures, since=since, address="1.2.3.4") == 1
    assert (
        crud.count_sign_in_events(session, outcomes=failures, since=since - timedelta(hours=3), username="alice") == 3
    )
    assert crud.last_sign_in_event(session, username="bob", outcome="success").address == "1.2.3.4"
    assert crud.last_sign_in_event(session, username="alice", outcome="success") is None
    assert len(session.exec(select(SignInEvent)).all()) == 4


def test_records_of_a_doctor_survive_reconnecting(engine, doctors):
    alice, _ = doctors
    with Session(engine) as session:
        crud.create_record(session, doctor=alice, **_values("Persisted"))
    engine.dispose()
    with Session(engine) as session:
        rows = session.exec(select(Record)).all()
    assert [r.patient_name for r in rows] == ["Persisted"]


def test_a_deleted_newest_record_number_is_never_given_again(session, doctors):
    # SQLite reuses the highest rowid unless the table is AUTOINCREMENT; PostgreSQL sequences never go back.
    alice, bob = doctors
    first = crud.create_record(session, doctor=alice, **_values("First"))
    newest = crud.create_record(session, doctor=alice, **_values("Second"))
    assert crud.delete_record(session, doctor=alice, record_id=newest.id) is not None
    again = crud.create_record(session, doctor=bob, **_values("Third"))
    assert again.id > newest.id > first.id
    assert crud.get_record(session, doctor=alice, record_id=newest.id) is None
