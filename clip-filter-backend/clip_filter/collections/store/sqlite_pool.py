"""The SQLite store's reader pool: a bounded set of reader connections shared by all threads."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from clip_filter.core.errors import ClipFilterError


def _rollback(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):  # no transaction left to roll back (SQLite may have ended it itself)
        conn.execute("ROLLBACK")


class _ReaderPool:
    """At most `size` reader connections, shared by all threads and reused (no connection per thread).

    A worker thread pool retires and starts threads all the time; connections tied to threads would
    leak descriptors with every burst. A caller beyond `size` waits for a free connection.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int) -> None:
        self._connect = connect
        self._size = max(1, size)
        self._idle: list[sqlite3.Connection] = []
        self._open = 0
        self._cond = threading.Condition()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    def _acquire(self) -> sqlite3.Connection:
        with self._cond:
            while True:
                if self._closed:
                    raise ClipFilterError("store_closed", "The collections store is closed.", 503)
                if self._idle:
                    return self._idle.pop()
                if self._open < self._size:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # an exception inside a snapshot: never hand out an open transaction
            _rollback(conn)
        with self._cond:
            if self._closed:
                self._open -= 1
                conn.close()
            else:
                self._idle.append(conn)
            self._cond.notify()

    @property
    def open_connections(self) -> int:
        return self._open

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for conn in self._idle:
                with suppress(sqlite3.Error):
                    conn.close()
            self._open -= len(self._idle)
            self._idle.clear()
            self._cond.notify_all()
