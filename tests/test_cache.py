"""The call cache: schema through numbered migrations, WAL mode, keys, rows that round-trip."""

import sqlite3

import pytest

from mathdistill.cache import MIGRATIONS, CallCache, NewCall, call_key, migrate, prompt_key

CALLS_COLUMNS = ["key", "model", "sample", "endpoint", "request_json", "response_json", "choice_index", "content",
                 "reasoning", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "attempts",
                 "created_utc"]
FAILURES_COLUMNS = ["key", "model", "sample", "reason", "detail", "attempts", "request_json", "created_utc"]


def columns(db, table):
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def test_migrate_blank_database_gives_exact_columns():
    db = sqlite3.connect(":memory:", isolation_level=None)
    applied = migrate(db)
    assert applied == ["m001_calls", "m002_failures"]
    assert columns(db, "calls") == CALLS_COLUMNS
    assert columns(db, "failures") == FAILURES_COLUMNS
    assert columns(db, "_migrations") == ["name", "applied_at"]
    assert [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == [f.__name__ for f in MIGRATIONS]
    assert migrate(db) == [], "a migration is applied once"


def test_an_older_file_gets_only_the_missing_migrations(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    MIGRATIONS[0](db)
    db.execute("INSERT INTO _migrations VALUES ('m001_calls', 'then')")
    db.close()
    with CallCache(path) as c:
        assert columns(c.db, "failures") == FAILURES_COLUMNS
        names = [r[0] for r in c.db.execute("SELECT name FROM _migrations ORDER BY rowid")]
        assert names == ["m001_calls", "m002_failures"]


def test_file_is_in_wal_mode(tmp_path):
    with CallCache(tmp_path / "c.sqlite") as c:
        assert c.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_key_covers_model_messages_params_and_sample():
    msgs = [{"role": "user", "content": "1+1?"}]
    params = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 10, "seed": None, "extra_body": {}}
    base = call_key(prompt_key("m", msgs, params), 0)
    assert base == call_key(prompt_key("m", [{"content": "1+1?", "role": "user"}], dict(reversed(params.items()))), 0)
    assert base != call_key(prompt_key("other", msgs, params), 0)
    assert base != call_key(prompt_key("m", [{"role": "user", "content": "1+2?"}], params), 0)
    assert base != call_key(prompt_key("m", msgs, {**params, "temperature": 0.7}), 0)
    assert base != call_key(prompt_key("m", msgs, {**params, "extra_body": {"top_k": 5}}), 0)
    assert base != call_key(prompt_key("m", msgs, params), 1)


def row(key, sample=0, content="4"):
    return NewCall(key=key, model="m", sample=sample, endpoint="http://h/v1", request_json='{"model": "m"}',
                   response_json='{"choices": []}', choice_index=0, content=content, reasoning="r",
                   finish_reason="stop", prompt_tokens=3, completion_tokens=5, latency_s=0.1, attempts=2)


def test_rows_round_trip_and_first_answer_wins(tmp_path):
    with CallCache(tmp_path / "c.sqlite") as c:
        c.put([row("a"), row("b", 1)])
        c.put([row("a", content="other")])  # never replaced: the first paid answer is the one kept
    with CallCache(tmp_path / "c.sqlite") as c:
        got = c.get_many(["a", "b", "missing"])
        assert set(got) == {"a", "b"}
        assert got["a"].content == "4" and got["a"].attempts == 2 and got["b"].sample == 1
        assert c.count() == 2
        assert c.rows()[0]["request_json"] == '{"model": "m"}'


def test_a_success_clears_the_failure_row(tmp_path):
    with CallCache(tmp_path / "c.sqlite") as c:
        c.put_failure("a", "m", 0, "timeout", "no answer", 3, "{}")
        assert c.failed_keys(["a", "b"]) == {"a"}
        c.put([row("a")])
        assert c.failed_keys(["a"]) == set() and c.rows("failures") == []


def test_lookup_of_more_keys_than_sqlite_allows_variables_is_chunked(tmp_path):
    """More keys than this SQLite build allows variables in one statement (32766 by default since SQLite 3.32,
    999 before, 250000 in some builds: read from the connection): one query would fail, get_many does not."""
    with CallCache(tmp_path / "c.sqlite") as c:
        limit = c.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        keys = [f"k{i}" for i in range(limit + 1)]
        with pytest.raises(sqlite3.OperationalError, match="too many SQL variables"):
            c.db.execute(f"SELECT key FROM calls WHERE key IN ({','.join('?' * len(keys))})", keys)
        c.put([row(f"k{i}", i) for i in range(1200)] + [row(keys[-1], 7)])
        got = c.get_many(keys)
        assert len(got) == 1201 and got[keys[-1]].sample == 7
        c.put_failure(keys[-1], "m", 0, "timeout", "no answer", 3, "{}")
        assert c.failed_keys(keys) == {keys[-1]}


def test_rows_refuses_other_tables():
    with CallCache() as c, pytest.raises(ValueError):
        c.rows("_migrations; DROP TABLE calls")
