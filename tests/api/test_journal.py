"""The durable journal: appends survive, a retried key is the same entry, a reused key with other content is
refused, entries come back in order, tokens are kept as hashes."""

import sqlite3

import pytest

from dagster_project.journal.store import Entity, IdempotencyConflict, Journal, content_digest


def append(journal: Journal, key: str | None, payload: dict, client: str = "tel"):
    return journal.append(kind="k", payload=payload, client=client, idempotency_key=key, response={"ids": {}},
                          entities=[Entity("Thing", str(payload.get("id", "x")), lookup="L")])


def test_an_append_is_on_disk_with_full_synchronous_wal(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    entry, new = append(journal, "a", {"id": 1})
    assert new and entry.state == "pending" and entry.seq == 1
    connection = journal._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    journal.close()
    # another connection (another process would be the same) sees it committed
    reopened = sqlite3.connect(tmp_path / "j.sqlite")
    assert reopened.execute("SELECT idempotency_key, state FROM entries").fetchall() == [("a", "pending")]


def test_a_retry_is_the_same_entry_and_a_reused_key_is_refused(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    first, _ = append(journal, "a", {"id": 1})
    again, new = append(journal, "a", {"id": 1})
    assert not new and again.seq == first.seq and again.write_id == first.write_id
    with pytest.raises(IdempotencyConflict, match="'a' was used for other content"):
        append(journal, "a", {"id": 2})
    assert journal.counts()["pending"] == 1


def test_without_a_key_identical_content_is_one_write_per_client(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    one, _ = append(journal, None, {"id": 1})
    two, new = append(journal, None, {"id": 1})
    other_client, new_other = append(journal, None, {"id": 1}, client="tel2")
    assert not new and one.seq == two.seq
    assert new_other and other_client.seq != one.seq


def test_pending_in_order_and_touching_finds_by_entity(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    for n in range(5):
        append(journal, f"k{n}", {"id": n})
    assert [e.payload["id"] for e in journal.pending()] == [0, 1, 2, 3, 4]
    journal.mark_applied([1, 2])
    assert [e.seq for e in journal.pending()] == [3, 4, 5]
    assert [e.seq for e in journal.touching("Thing", entity_id="3")] == [4]
    assert journal.touching("Thing", entity_id="0") == []  # applied: stored rows are read instead
    assert [e.seq for e in journal.touching("Thing", entity_id="0", applied_too=True)] == [1]
    journal.mark_dead(3, "refused: why")
    assert journal.counts() == {"pending": 2, "applied": 2, "dead": 1}
    assert journal.dead_letters()[0].last_error == "refused: why"


def test_the_content_digest_ignores_key_order_only():
    assert content_digest("k", {"a": 1, "b": 2}) == content_digest("k", {"b": 2, "a": 1})
    assert content_digest("k", {"a": 1}) != content_digest("k2", {"a": 1})
    assert content_digest("k", {"a": 1}) != content_digest("k", {"a": 1.5})


def test_tokens_are_stored_as_hashes(tmp_path):
    from dagster_project.api.auth import TokenRegistry

    journal = Journal(tmp_path / "j.sqlite")
    registry = TokenRegistry(journal, admin_token="env-admin")
    token = registry.create("tel", ["telescope"])
    stored = sqlite3.connect(tmp_path / "j.sqlite").execute("SELECT * FROM tokens").fetchall()
    assert token not in repr(stored) and len(stored[0][1]) == 64
    assert registry.client_for(token).scopes == {"telescope"}
    assert registry.client_for("env-admin").scopes == {"admin"}
    assert registry.client_for(token + "x") is None
    with pytest.raises(ValueError, match="exists already"):
        registry.create("tel", ["reader"])
    with pytest.raises(ValueError, match="scopes must be"):
        registry.create("x", ["root"])
    assert journal.revoke_token("tel") and registry.client_for(token) is None
