"""How every store of the workspace uses SQLite (stdlib sqlite3): one rule for the runs folder's database
(workspace.store: the labels, and what grows there) and the feedback folder's (workspace.feedback).

- WAL (readers never wait for the writer), and every connection waits up to BUSY_TIMEOUT_MS for a busy database
  instead of failing with `database is locked`: several threads and processes may write at once.
- A write is one transaction, the write lock taken up front (BEGIN IMMEDIATE): two transactions that both read
  first never deadlock on the upgrade, and a kill -9 at any moment loses at most the transaction in flight
  (synchronous=NORMAL: a commit is in the WAL file before it returns, without an fsync; what the operating
  system has not written yet is lost only when the machine itself goes down).
- In one process, writers to one database take turns on a lock of their own before SQLite's: SQLite's busy
  wait polls and is not fair, and with many threads of two processes a writer was measured waiting past
  BUSY_TIMEOUT_MS (tests/test_feedback.py). Across processes SQLite's lock does it alone.
- Every call opens its own short-lived connection (`read`, `write`), so an object is safe to share between
  threads; one more connection stays open as long as the object, because the last connection to close would
  checkpoint the WAL (and fsync) every time.
- The schema's version is `PRAGMA user_version`: `migrations[v]` brings a database at version v to v + 1, run in
  one transaction when the database is opened. A database from a newer version is refused, never changed.
"""

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 10_000
_write_locks, _write_locks_guard = {}, threading.Lock()  # one lock a database file in this process


def _write_lock(path):
    with _write_locks_guard:
        return _write_locks.setdefault(str(path.resolve()), threading.RLock())  # a nested write still fails, not hangs


class SQLiteDatabase:
    """The SQLite file at `path`, created or migrated on first use. Subclasses set `migrations` (SQL scripts, one
    a version) and `error` (the exception type a refused database raises, built from one message)."""

    migrations: list[str] = []
    error: type[Exception] = Exception

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writing = _write_lock(self.path)
        self._open = self.connection(check_same_thread=False)  # kept open: see the module's docstring
        self._open.execute("PRAGMA journal_mode=WAL")
        self._migrate(self._open)

    def connection(self, check_same_thread=True):
        """A connection in autocommit mode that waits for a busy database; the caller closes it."""
        con = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=check_same_thread
        )
        con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextmanager
    def _connect(self):
        con = self.connection()
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def read(self):
        """A connection for reads outside a transaction (each statement sees the latest commit)."""
        with self._connect() as con:
            yield con

    @contextmanager
    def write(self):
        """One transaction, taken with the write lock up front (no deadlock between two upgrading readers)."""
        with self._writing, self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _migrate(self, con):
        latest = len(self.migrations)
        con.execute("BEGIN IMMEDIATE")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > latest:
            con.execute("ROLLBACK")
            raise self.error(f"{self.path}: written by a newer version (schema {version}, this one knows {latest})")
        for v in range(version, latest):
            for statement in self.migrations[v].split(";"):
                if statement.strip():
                    con.execute(statement)
        con.execute(f"PRAGMA user_version={latest}")
        con.execute("COMMIT")

    def version(self):
        with self._connect() as con:
            return con.execute("PRAGMA user_version").fetchone()[0]
