"""What every store does around a write transaction whose rows reference originals (security review, M9).

Originals are written (and fsynced) before the transaction that references them. If that transaction does not
commit, they must go (nobody else uses their unique names); once it committed, they must stay, whatever fails
afterwards (a change listener, a MemoryError, an interrupt): the rows point at them. When the outcome of the
COMMIT is unknown (the connection to PostgreSQL dropped during it), they stay too: an unreferenced file is
removed later by garbage collection (gc.py), while a committed row whose file was removed is lost data.

- `CommitState`: per thread, what the last write transaction of this thread came to; each store's
  `_transaction` records it (`begin`, then `committed` or `commit_failed`).
- `originals_until_commit(files, paths, state)`: the guard a write that references originals runs inside.
- `announce(changes, listeners)`: change listeners after a COMMIT; their errors are logged, never raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from clip_filter.collections.store.files import DataFiles
    from clip_filter.collections.store.records import Change

log = logging.getLogger(__name__)

Outcome = Literal["none", "committed", "unknown"]


class CommitState:
    """Per thread: "none" (no commit: rolled back, failed before or at the COMMIT), "committed", or "unknown"."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def outcome(self) -> Outcome:
        return getattr(self._local, "outcome", "none")

    def begin(self) -> None:
        self._local.outcome = "none"

    def committed(self) -> None:
        self._local.outcome = "committed"

    def commit_failed(self, known_rolled_back: bool) -> None:
        """The COMMIT raised: rolled back for sure (the database answered with an error), or maybe not."""
        self._local.outcome = "none" if known_rolled_back else "unknown"


@contextmanager
def originals_until_commit(files: DataFiles, paths: Iterable[str | None], state: CommitState) -> Iterator[None]:
    """Removes `paths` when the block fails and its transaction certainly did not commit; keeps them otherwise."""
    state.begin()  # a failure before the transaction starts is "none" too, never a stale outcome of this thread
    try:
        yield
    except BaseException:
        if state.outcome == "none":
            files.remove_files(list(paths))
        else:
            log.warning("a write failed after its COMMIT (%s); its originals are kept", state.outcome)
        raise


def announce(changes: list[Change], listeners: list[Callable[[Change], None]]) -> None:
    """Call the listeners after a COMMIT. The data is committed: a listener error is logged, never raised (the
    caller must not undo anything; a listener that fails drops its own cache)."""
    for change in changes:
        for listener in listeners:
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - the commit stands
                log.exception("a change listener failed after a commit")
