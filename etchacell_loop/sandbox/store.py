"""The sandbox's persistent state: one SQLite file and a folder of blobs under ``--state``.

Why SQLite and not memory: a restarted sandbox must lose nothing (subjects, classifications,
tokens, exports), and tests kill and restart it. Every Panoptes resource is one row holding its
attributes as JSON, with the few foreign keys the API filters on as indexed columns, so keyset
paging over a hundred thousand classifications stays an index range scan.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# First id handed out per resource type. Classification ids start past 2**31 on purpose: the
# loop must keep them as 64-bit integers, and real Panoptes is heading there.
FIRST_IDS: Mapping[str, int] = {
    "users": 100,
    "projects": 1000,
    "workflows": 2000,
    "subject_sets": 3000,
    "subjects": 100_000_000,
    "set_member_subjects": 500_000,
    "subject_workflow_statuses": 125_000_000,
    "classifications": 2_200_000_000,
    "media": 46_000,
}

INDEXED_COLUMNS = ("project_id", "workflow_id", "subject_set_id", "subject_id", "user_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resource (
    type TEXT NOT NULL,
    id INTEGER NOT NULL,
    project_id INTEGER,
    workflow_id INTEGER,
    subject_set_id INTEGER,
    subject_id INTEGER,
    user_id INTEGER,
    version INTEGER NOT NULL DEFAULT 1,
    data TEXT NOT NULL,
    PRIMARY KEY (type, id)
);
CREATE INDEX IF NOT EXISTS ix_resource_project ON resource (type, project_id, id);
CREATE INDEX IF NOT EXISTS ix_resource_workflow ON resource (type, workflow_id, id);
CREATE INDEX IF NOT EXISTS ix_resource_set ON resource (type, subject_set_id, id);
CREATE INDEX IF NOT EXISTS ix_resource_subject ON resource (type, subject_id, id);
CREATE TABLE IF NOT EXISTS sequence (type TEXT PRIMARY KEY, next_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS token (
    token TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id INTEGER,
    client_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS web_session (sid TEXT PRIMARY KEY, csrf TEXT NOT NULL, user_id INTEGER);
"""


@dataclass(frozen=True)
class Row:
    """One stored resource: its id, attributes, foreign keys and version (for show ETags)."""

    type: str
    id: int
    data: dict[str, Any]
    version: int
    keys: dict[str, int | None]

    def key(self, name: str) -> int | None:
        return self.keys.get(name)


def now_iso() -> str:
    """Panoptes' timestamp format: ISO 8601 UTC with milliseconds and a Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Store:
    """Thread-safe access to the sandbox state. One connection, serialised by a lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.blob_dir = state_dir / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(state_dir / "sandbox.db", check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes so a crash leaves all or none of them; nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    # --- resources --------------------------------------------------------------------------------

    def next_id(self, rtype: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT next_id FROM sequence WHERE type = ?", (rtype,)).fetchone()
            value = row[0] if row else FIRST_IDS.get(rtype, 1)
            self._conn.execute(
                "INSERT INTO sequence (type, next_id) VALUES (?, ?) "
                "ON CONFLICT(type) DO UPDATE SET next_id = excluded.next_id",
                (rtype, value + 1),
            )
            return int(value)

    def peek_id(self, rtype: str) -> int:
        """The id ``next_id`` would hand out now (nothing is taken)."""
        with self._lock:
            row = self._conn.execute("SELECT next_id FROM sequence WHERE type = ?", (rtype,)).fetchone()
            return int(row[0]) if row else FIRST_IDS.get(rtype, 1)

    def insert(self, rtype: str, data: dict[str, Any], keys: Mapping[str, int | None], rid: int | None = None) -> Row:
        """Store a new resource; ``rid`` forces an id (used to replay recorded fixtures)."""
        with self._lock:
            if rid is None:
                rid = self.next_id(rtype)
            else:
                self._bump_sequence(rtype, rid)
            columns = {name: keys.get(name) for name in INDEXED_COLUMNS}
            self._conn.execute(
                f"INSERT INTO resource (type, id, {', '.join(columns)}, version, data) "
                f"VALUES (?, ?, {', '.join('?' for _ in columns)}, 1, ?)",
                (rtype, rid, *columns.values(), json.dumps(data)),
            )
            return Row(rtype, rid, data, 1, dict(columns))

    def _bump_sequence(self, rtype: str, rid: int) -> None:
        row = self._conn.execute("SELECT next_id FROM sequence WHERE type = ?", (rtype,)).fetchone()
        current = row[0] if row else FIRST_IDS.get(rtype, 1)
        if rid >= current:
            self._conn.execute(
                "INSERT INTO sequence (type, next_id) VALUES (?, ?) "
                "ON CONFLICT(type) DO UPDATE SET next_id = excluded.next_id",
                (rtype, rid + 1),
            )

    def update(self, row: Row, data: dict[str, Any], keys: Mapping[str, int | None] | None = None) -> Row:
        """Replace a resource's attributes; the version moves, so its show ETag changes."""
        with self._lock:
            merged = dict(row.keys)
            merged.update(keys or {})
            sets = ", ".join(f"{name} = ?" for name in INDEXED_COLUMNS)
            self._conn.execute(
                f"UPDATE resource SET data = ?, version = version + 1, {sets} WHERE type = ? AND id = ?",
                (json.dumps(data), *(merged.get(n) for n in INDEXED_COLUMNS), row.type, row.id),
            )
            return Row(row.type, row.id, data, row.version + 1, merged)

    def delete(self, rtype: str, rid: int) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM resource WHERE type = ? AND id = ?", (rtype, rid))

    def get(self, rtype: str, rid: int) -> Row | None:
        with self._lock:
            found = self._conn.execute(
                f"SELECT id, version, data, {', '.join(INDEXED_COLUMNS)} FROM resource WHERE type = ? AND id = ?",
                (rtype, rid),
            ).fetchone()
        return self._row(rtype, found) if found else None

    def select(
        self,
        rtype: str,
        *,
        where: Mapping[str, Sequence[int]] | None = None,
        ids: Sequence[int] | None = None,
        after_id: int | None = None,
        member_of_set: int | None = None,
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Row]:
        """Rows of one type filtered on indexed keys, ordered by id (keyset or offset paging)."""
        sql, params = self._filter_sql(rtype, where, ids, after_id, member_of_set)
        sql += f" ORDER BY r.id {'DESC' if descending else 'ASC'}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        columns = ", ".join(f"r.{c}" for c in INDEXED_COLUMNS)
        with self._lock:
            found = self._conn.execute(f"SELECT r.id, r.version, r.data, {columns} {sql}", params).fetchall()
        return [self._row(rtype, f) for f in found]

    def count(
        self,
        rtype: str,
        *,
        where: Mapping[str, Sequence[int]] | None = None,
        ids: Sequence[int] | None = None,
        member_of_set: int | None = None,
    ) -> int:
        sql, params = self._filter_sql(rtype, where, ids, None, member_of_set)
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) {sql}", params).fetchone()[0])

    @staticmethod
    def _filter_sql(
        rtype: str,
        where: Mapping[str, Sequence[int]] | None,
        ids: Sequence[int] | None,
        after_id: int | None,
        member_of_set: int | None,
    ) -> tuple[str, list[Any]]:
        sql = "FROM resource AS r"
        params: list[Any] = []
        if member_of_set is not None:
            sql += (
                " JOIN resource AS m ON m.type = 'set_member_subjects' AND m.subject_id = r.id AND m.subject_set_id = ?"
            )
            params.append(member_of_set)
        sql += " WHERE r.type = ?"
        params.append(rtype)
        for name, values in (where or {}).items():
            if name not in INDEXED_COLUMNS:
                raise ValueError(f"cannot filter on {name}")
            sql += f" AND r.{name} IN ({', '.join('?' for _ in values)})"
            params.extend(values)
        if ids is not None:
            sql += f" AND r.id IN ({', '.join('?' for _ in ids) or 'NULL'})"
            params.extend(ids)
        if after_id is not None:
            sql += " AND r.id > ?"
            params.append(after_id)
        return sql, params

    @staticmethod
    def _row(rtype: str, found: Sequence[Any]) -> Row:
        rid, version, data, *keys = found
        return Row(rtype, int(rid), json.loads(data), int(version), dict(zip(INDEXED_COLUMNS, keys, strict=True)))

    # --- tokens and web sessions ----------------------------------------------------------------

    def put_token(self, token: str, kind: str, user_id: int | None, client_id: str, expires_at: float) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO token (token, kind, user_id, client_id, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token, kind, user_id, client_id, expires_at),
            )

    def get_token(self, token: str, kind: str) -> tuple[int | None, str, float] | None:
        with self._lock:
            found = self._conn.execute(
                "SELECT user_id, client_id, expires_at FROM token WHERE token = ? AND kind = ?", (token, kind)
            ).fetchone()
        return (found[0], found[1], float(found[2])) if found else None

    def drop_token(self, token: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM token WHERE token = ?", (token,))

    def put_web_session(self, sid: str, csrf: str, user_id: int | None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO web_session (sid, csrf, user_id) VALUES (?, ?, ?)", (sid, csrf, user_id)
            )

    def get_web_session(self, sid: str) -> tuple[str, int | None] | None:
        with self._lock:
            found = self._conn.execute("SELECT csrf, user_id FROM web_session WHERE sid = ?", (sid,)).fetchone()
        return (found[0], found[1]) if found else None

    # --- blobs ------------------------------------------------------------------------------------

    def blob_path(self, key: str) -> Path:
        """Where a blob lives; keys are ``<container>/<name>`` made by the sandbox, never by clients."""
        path = (self.blob_dir / key).resolve()
        if self.blob_dir.resolve() not in path.parents:
            raise ValueError("blob key escapes the blob folder")
        return path
