"""The replayer applies the journal to the catalog in order and exactly once, dead-letters what can never
apply with its reason, and waits out an unreachable catalog without losing or counting anything."""

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from dagster_project.api.appliers import APPLIERS, FINISH_UNIT, START_UNIT
from dagster_project.catalog.schema.observatory import AppliedWrite, ExecutedObsUnit
from dagster_project.journal.replayer import Replayer
from dagster_project.journal.store import Journal

START = "2026-12-07T01:00:00+00:00"


def start_entry(journal: Journal, key: str, obs_unit_id: int = 7, unit_id: str | None = None):
    unit_id = unit_id or str(uuid.uuid4())
    journal.append(kind=START_UNIT, client="tel", idempotency_key=key, response={"ids": {"id": unit_id}},
                   payload={"id": unit_id, "unit": {"obs_unit_id": obs_unit_id, "instrument": "cam",
                                                    "start_time": START}})
    return unit_id


def finish_entry(journal: Journal, key: str, unit_id: str, end_time: str = "2026-12-07T02:00:00+00:00"):
    journal.append(kind=FINISH_UNIT, client="tel", idempotency_key=key, response={"ids": {"id": unit_id}},
                   payload={"id": unit_id, "finish": {"status": "succeeded", "end_time": end_time, "reason": None}})


def units(catalog) -> list[ExecutedObsUnit]:
    with catalog.session() as session:
        return list(session.scalars(sa.select(ExecutedObsUnit).order_by(ExecutedObsUnit.created_at)))


def applied_count(catalog) -> int:
    with catalog.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(AppliedWrite))


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


def test_entries_apply_in_order_exactly_once(journal, catalog):
    unit_id = start_entry(journal, "s1")
    finish_entry(journal, "f1", unit_id)  # needs the start applied before it
    replayer = Replayer(journal, catalog.url.render_as_string(hide_password=False), APPLIERS, batch=1)
    report = replayer.replay()
    assert (report.applied, report.dead, report.outage) == (2, 0, None)
    [unit] = units(catalog)
    assert (str(unit.id), unit.status.value, unit.end_time) == (unit_id, "succeeded",
                                                                datetime(2026, 12, 7, 2, tzinfo=UTC))
    assert replayer.replay().applied == 0  # nothing pending: nothing done
    replayer.close()


def test_a_crash_between_the_catalog_commit_and_the_journal_mark_applies_nothing_twice(journal, catalog):
    for n in range(3):
        start_entry(journal, f"s{n}", obs_unit_id=n)
    url = catalog.url.render_as_string(hide_password=False)
    Replayer(journal, url, APPLIERS).replay()
    # as if the replayer had died after committing the catalog but before marking the journal
    journal._connection().execute("UPDATE entries SET state = 'pending'")
    report = Replayer(journal, url, APPLIERS).replay()
    assert report.applied == 3 and report.dead == 0
    assert len(units(catalog)) == 3 and applied_count(catalog) == 3


def test_a_write_the_catalog_refuses_is_dead_lettered_and_the_rest_go_on(journal, catalog):
    finish_entry(journal, "orphan", str(uuid.uuid4()))  # finishes a unit nobody started
    unit_id = start_entry(journal, "s1")
    finish_entry(journal, "backwards", unit_id, end_time="2026-12-06T00:00:00+00:00")  # ends before it starts
    report = Replayer(journal, catalog.url.render_as_string(hide_password=False), APPLIERS).replay()
    assert (report.applied, report.dead) == (1, 2)
    reasons = [e.last_error for e in journal.dead_letters()]
    assert any("no executed observation unit" in r for r in reasons)
    assert any("is before the unit's start_time" in r for r in reasons)
    assert [u.status.value for u in units(catalog)] == ["started"]
    assert applied_count(catalog) == 1  # a dead letter leaves no applied_writes row behind


def test_the_same_key_applied_before_with_other_content_is_dead_lettered(journal, catalog, tmp_path):
    url = catalog.url.render_as_string(hide_password=False)
    start_entry(journal, "same-key", obs_unit_id=1)
    Replayer(journal, url, APPLIERS).replay()
    other = Journal(tmp_path / "other-instance.sqlite")  # another API instance, the same client key
    start_entry(other, "same-key", obs_unit_id=2)
    report = Replayer(other, url, APPLIERS).replay()
    assert report.dead == 1 and "applied before with other content" in other.dead_letters()[0].last_error
    assert len(units(catalog)) == 1


def test_an_unknown_failure_is_retried_then_dead_lettered_holding_the_queue_meanwhile(journal, catalog):
    calls = []

    def failing(session, entry):
        calls.append(entry.seq)
        raise RuntimeError("a bug")

    journal.append(kind="buggy", payload={}, client="tel", idempotency_key="b", response={"ids": {}})
    start_entry(journal, "s1")
    replayer = Replayer(journal, catalog.url.render_as_string(hide_password=False), {**APPLIERS, "buggy": failing},
                        max_attempts=3)
    for attempt in range(2):
        report = replayer.replay()
        assert report.applied == 0 and report.dead == 0  # the start behind it waits: order is kept
    report = replayer.replay()
    assert report.dead == 1 and "failed 3 times; last: RuntimeError: a bug" in journal.dead_letters()[0].last_error
    assert replayer.replay().applied == 1 and len(units(catalog)) == 1
    assert set(calls) == {1}  # only ever the buggy entry (in its batch, then alone), never after its dead letter


def test_an_unreachable_catalog_is_waited_out_with_nothing_lost(journal, catalog, unused_tcp_port):
    start_entry(journal, "s1")
    down = f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/nowhere"
    report = Replayer(journal, down, APPLIERS).replay()
    assert report.outage and report.applied == 0 and report.dead == 0
    assert journal.counts()["pending"] == 1 and journal.pending()[0].attempts == 0
    assert Replayer(journal, catalog.url.render_as_string(hide_password=False), APPLIERS).replay().applied == 1


def test_only_one_replayer_works_on_a_journal_at_a_time(journal, catalog):
    import fcntl

    start_entry(journal, "s1")
    with open(f"{journal.path}.replay-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert Replayer(journal, catalog.url.render_as_string(hide_password=False), APPLIERS).replay().busy
    assert journal.counts()["pending"] == 1


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
