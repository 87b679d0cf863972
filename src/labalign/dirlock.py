"""One labalign command per output directory at a time: a second would interleave its files."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from labalign.errors import LabalignError

LOCK_FILE = ".lock"
# Who holds a data folder's lock: `labalign generate` there, or a run's generate stage in RUN/data.
GENERATE_LOCK = "labalign generate or run"


@contextlib.contextmanager
def locked(directory: Path, *, what: str = "labalign run") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (created if needed); the OS releases it if we die."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK_FILE).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabalignError(
                f"another {what} is working in this directory",
                path=directory,
                hint="wait for it to finish, or stop it (Ctrl-C) and run again to resume",
            ) from None
        yield
