"""The SQLite cache of endpoint calls: one row per finished sample, so no call is ever paid for twice.

Every teacher or judge call that finished is a row in ``calls``, keyed by :func:`call_key`, the hash of
(endpoint model, messages, sampling parameters, sample index). The row keeps the full request body as sent
and the full response body as received (we replay them), parsed fields, usage and latency; never the API
key or any header. A call that failed for good is a row in ``failures`` until a later run gets it.

The file is in WAL mode with ``synchronous=NORMAL``: each finished call is committed before it counts as
done, and a committed row survives the process being killed (``kill -9``); only a power loss can take
the last few commits. The schema changes only through the numbered migrations below, each applied once and
recorded in ``_migrations`` (the pattern of simonw/llm's ``migrations.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []
LOOKUP_CHUNK = 500  # keys per ``IN (...)`` query; SQLite allows 32766 variables, smaller chunks stay fast


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_calls(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE calls (
            key TEXT PRIMARY KEY,          -- call_key(): hash of model, messages, sampling params, sample
            model TEXT NOT NULL,           -- model name at the endpoint
            sample INTEGER NOT NULL,       -- sample index of this row
            endpoint TEXT,                 -- base URL, without credentials or query string
            request_json TEXT NOT NULL,    -- the request body as sent (no headers, no key)
            response_json TEXT NOT NULL,   -- the response body as received
            choice_index INTEGER NOT NULL, -- which choice of the response is this sample (n= calls)
            content TEXT NOT NULL,         -- visible answer
            reasoning TEXT,                -- reasoning_content and/or inline <think> text
            finish_reason TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_s REAL,                -- seconds for the successful try
            attempts INTEGER NOT NULL,     -- tries it took (1 = no retry)
            created_utc TEXT NOT NULL
        )""")


@migration
def m002_failures(db: sqlite3.Connection) -> None:
    db.execute("""
        CREATE TABLE failures (
            key TEXT PRIMARY KEY,          -- the call_key() that failed for good; deleted once a call succeeds
            model TEXT NOT NULL,
            sample INTEGER NOT NULL,
            reason TEXT NOT NULL,          -- timeout | connection | bad_body | no_answer | context_length | http_<status>
            detail TEXT,
            attempts INTEGER NOT NULL,
            request_json TEXT,
            created_utc TEXT NOT NULL
        )""")


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded in ``_migrations``; return the names applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, _now()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(fn.__name__)
    return applied


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def prompt_key(model: str | None, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 over canonical JSON of (endpoint model, messages, sampling parameters): one prompt."""
    blob = json.dumps({"model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def call_key(prompt: str, sample: int) -> str:
    """The cache key of one sample: sha256 of (:func:`prompt_key`, sample index)."""
    return hashlib.sha256(f"{prompt}:{sample}".encode()).hexdigest()


@dataclass
class CachedCall:
    """The parsed fields of one ``calls`` row (request/response JSON stay in the file until asked for)."""

    key: str
    sample: int
    content: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    attempts: int


@dataclass
class NewCall:
    """A finished sample to store; ``request_json``/``response_json`` are the bodies as sent/received."""

    key: str
    model: str
    sample: int
    endpoint: str | None
    request_json: str
    response_json: str
    choice_index: int
    content: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    attempts: int


_FIELDS = "key, sample, content, reasoning, finish_reason, prompt_tokens, completion_tokens, latency_s, attempts"


class CallCache:
    """An open cache file (or ``":memory:"`` for a run with ``--no-cache``)."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one commit per finished call.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a killed process
        migrate(self.db)
        self._has_failures: bool | None = None  # looked up once, then kept up to date

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "CallCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedCall]:
        """Rows for those ``keys`` that are in the cache."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, CachedCall] = {}
        for i in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[i:i + LOOKUP_CHUNK]
            q = f"SELECT {_FIELDS} FROM calls WHERE key IN ({','.join('?' * len(chunk))})"
            for row in self.db.execute(q, chunk):
                out[row[0]] = CachedCall(*row)
        return out

    def put(self, calls: list[NewCall]) -> None:
        """Store finished samples in one transaction (committed when this returns); clear their failures."""
        now = _now()
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT OR IGNORE INTO calls (key, model, sample, endpoint, request_json, response_json, choice_index,"
                " content, reasoning, finish_reason, prompt_tokens, completion_tokens, latency_s, attempts, created_utc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.key, c.model, c.sample, c.endpoint, c.request_json, c.response_json, c.choice_index, c.content,
                  c.reasoning, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.latency_s, c.attempts, now)
                 for c in calls])
            if self.has_failures:
                self.db.executemany("DELETE FROM failures WHERE key = ?", [(c.key,) for c in calls])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @property
    def has_failures(self) -> bool:
        if self._has_failures is None:
            self._has_failures = self.db.execute("SELECT 1 FROM failures LIMIT 1").fetchone() is not None
        return self._has_failures

    def put_failure(self, key: str, model: str, sample: int, reason: str, detail: str, attempts: int,
                    request_json: str | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO failures (key, model, sample, reason, detail, attempts, request_json, created_utc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (key, model, sample, reason, detail, attempts, request_json, _now()))
        self._has_failures = True

    def failed_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` failed for good in an earlier run (and are still not in ``calls``)."""
        if not self.has_failures:
            return set()
        keys = list(keys)
        out: set[str] = set()
        for i in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[i:i + LOOKUP_CHUNK]
            q = f"SELECT key FROM failures WHERE key IN ({','.join('?' * len(chunk))})"
            out.update(r[0] for r in self.db.execute(q, chunk))
        return out

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def rows(self, table: str = "calls") -> list[dict[str, Any]]:
        """Every row of ``calls`` or ``failures`` as dicts (for replay and tests)."""
        if table not in ("calls", "failures"):
            raise ValueError(table)
        cur = self.db.execute(f"SELECT * FROM {table} ORDER BY rowid")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]
