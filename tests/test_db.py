from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, select

from xray.records.db import Doctor, Record, SignInEvent, init_db, make_engine, normalize_database_url, utcnow


def _record(doctor_id: int, **extra) -> Record:
    values = dict(
        doctor_id=doctor_id,
        patient_name="Jane Roe",
        exam_date=date(2024, 5, 1),
        image_sha256="a" * 64,
        model_name="local-dir:/m",
        model_version="abc",
        label_names=["NORMAL", "PNEUMONIA"],
        probabilities={"NORMAL": 0.25, "PNEUMONIA": 0.75},
        predicted_label="PNEUMONIA",
    )
    values.update(extra)
    return Record(**values)


def test_tables_and_trust_columns_exist(engine):
    inspector = inspect(engine)
    assert {"doctor", "record", "signinevent"} <= set(inspector.get_table_names())
    columns = {c["name"]: c for c in inspector.get_columns("record")}
    for name in ("final_read", "final_note", "final_read_at"):
        assert columns[name]["nullable"], name


def test_record_round_trip_keeps_json_and_utc_times(engine):
    with Session(engine) as session:
        doctor = Doctor(username="alice", display_name="Alice", password_hash="x")
        session.add(doctor)
        session.commit()
        session.refresh(doctor)
        session.add(_record(doctor.id))
        session.commit()
    with Session(engine) as session:
        record = session.exec(select(Record)).one()
        assert record.probabilities == {"NORMAL": 0.25, "PNEUMONIA": 0.75}
        assert record.label_names == ["NORMAL", "PNEUMONIA"]
        assert record.exam_date == date(2024, 5, 1)
        assert record.created_at.tzinfo is not None
        assert abs(record.created_at - datetime.now(UTC)) < timedelta(minutes=1)
        assert record.final_read is None and record.final_read_at is None


def test_record_needs_an_existing_doctor(engine):
    from sqlalchemy.exc import IntegrityError

    with Session(engine) as session:
        session.add(_record(9999))
        with pytest.raises(IntegrityError):
            session.commit()


def test_usernames_are_unique(engine):
    from sqlalchemy.exc import IntegrityError

    with Session(engine) as session:
        session.add(Doctor(username="bob", display_name="Bob"))
        session.commit()
        session.add(Doctor(username="bob", display_name="Other Bob"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_sqlite_file_is_created_in_missing_folder_with_wal(tmp_path):
    path = tmp_path / "deep" / "er" / "xray.db"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
    assert path.is_file()


def test_rows_survive_a_new_engine_on_the_same_database(db_url):
    first = make_engine(db_url)
    init_db(first)
    with Session(first) as session:
        session.add(SignInEvent(username="carol", address="10.0.0.1", outcome="success"))
        session.commit()
    first.dispose()
    second = make_engine(db_url)
    init_db(second)  # idempotent: must not drop or duplicate anything
    with Session(second) as session:
        events = session.exec(select(SignInEvent)).all()
    second.dispose()
    assert [(e.username, e.outcome) for e in events] == [("carol", "success")]


def test_plain_postgres_urls_use_psycopg():
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_utcnow_is_aware():
    assert utcnow().utcoffset() == timedelta(0)


def test_an_existing_database_gets_the_new_nullable_columns(tmp_path):
    from sqlalchemy import inspect, text

    from xray.records.db import init_db, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    init_db(engine)
    with engine.begin() as connection:  # the record table as it was before the trust columns
        connection.execute(text('ALTER TABLE "record" DROP COLUMN gate_reasons'))
        connection.execute(text('ALTER TABLE "record" DROP COLUMN heat_in_lungs'))
        connection.execute(text('ALTER TABLE "record" DROP COLUMN heat_in_chest'))
    assert "gate_reasons" not in {c["name"] for c in inspect(engine).get_columns("record")}
    init_db(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("record")}
    assert {"gate_reasons", "heat_in_lungs", "heat_in_chest"} <= columns
    engine.dispose()


def _previous_release_database(url: str) -> None:
    """The tables as a release before AUTOINCREMENT made them (same columns and indexes, plain rowid ids)."""
    from sqlalchemy.schema import CreateIndex, CreateTable
    from sqlmodel import SQLModel

    engine = make_engine(url)
    with engine.begin() as connection:
        for table in SQLModel.metadata.sorted_tables:
            ddl = str(CreateTable(table).compile(dialect=engine.dialect)).replace(" AUTOINCREMENT", "")
            connection.execute(text(ddl))
            for index in table.indexes:
                connection.execute(CreateIndex(index))
    engine.dispose()


def _record_sql(engine) -> str:
    with engine.connect() as connection:
        return connection.execute(text("SELECT sql FROM sqlite_master WHERE type='table' AND name='record'")).scalar()


def _indexes(engine) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes("record")}


def test_sqlite_record_table_is_autoincrement(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    init_db(engine)
    assert "AUTOINCREMENT" in _record_sql(engine).upper()
    engine.dispose()


def test_an_existing_sqlite_database_is_migrated_to_never_reuse_record_numbers(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _previous_release_database(url)
    old = make_engine(url)
    assert "AUTOINCREMENT" not in _record_sql(old).upper()
    with Session(old) as session:
        doctor = Doctor(username="alice", display_name="Alice", password_hash="x")
        session.add(doctor)
        session.commit()
        session.refresh(doctor)
        for n in range(1, 6):
            session.add(_record(doctor.id, patient_name=f"P{n}", gate_reasons=["a photo"] if n == 2 else None,
                                final_read="NORMAL" if n == 3 else None, heat_in_lungs=0.5 if n == 4 else None))
        session.commit()
        session.delete(session.get(Record, 3))  # a gap in the middle must stay a gap
        session.commit()
        before = [r.model_dump() for r in session.exec(select(Record).order_by(Record.id))]
    old_indexes = _indexes(old)
    old.dispose()

    engine = make_engine(url)
    init_db(engine)
    init_db(engine)  # idempotent: a second start (or a second replica) changes nothing
    assert "AUTOINCREMENT" in _record_sql(engine).upper()
    assert _indexes(engine) == old_indexes
    with Session(engine) as session:
        after = [r.model_dump() for r in session.exec(select(Record).order_by(Record.id))]
        assert after == before and [r["id"] for r in after] == [1, 2, 4, 5]
        doctor = session.exec(select(Doctor)).one()
        newest = _record(doctor.id, patient_name="P6")
        session.add(newest)
        session.commit()
        assert newest.id == 6
        session.delete(newest)
        session.commit()
        again = _record(doctor.id, patient_name="P7")
        session.add(again)
        session.commit()
        assert again.id == 7
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()


def test_replicas_starting_together_migrate_an_old_sqlite_database_once(tmp_path):
    import threading

    url = f"sqlite:///{tmp_path / 'old.db'}"
    _previous_release_database(url)
    old = make_engine(url)
    with Session(old) as session:
        doctor = Doctor(username="alice", display_name="Alice", password_hash="x")
        session.add(doctor)
        session.commit()
        session.refresh(doctor)
        session.add_all([_record(doctor.id, patient_name=f"P{n}") for n in range(50)])
        session.commit()
    old.dispose()

    engines = [make_engine(url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine) -> None:
        try:
            barrier.wait()
            init_db(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert "AUTOINCREMENT" in _record_sql(engines[0]).upper()
    with Session(engines[0]) as session:
        names = [r.patient_name for r in session.exec(select(Record).order_by(Record.id))]
    assert names == [f"P{n}" for n in range(50)]
    with engines[0].connect() as connection:
        tables = connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'")).scalars().all()
    assert not [t for t in tables if t.startswith("_record")]
    for engine in engines:
        engine.dispose()
