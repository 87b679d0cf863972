"""Stopping a long command promptly on Ctrl-C or `kill`, leaving it resumable.

Python runs signal handlers only between bytecodes, so a signal that arrives during one long native
call (a training step's backward pass, a llama.cpp batch decode: 20 s and more on a laptop CPU) waits
for it to return. Every long stage writes its progress atomically (checkpoints renamed into place,
one cache transaction per answer) and resumes after a SIGKILL, so when the clean path has not ended
the process within a short grace period, it is ended the way a kill would, with one line saying so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType

GRACE_S = 2.0
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def stop_promptly(message: str, *, grace_s: float = GRACE_S) -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C; if either has not ended the block within `grace_s`
    seconds (the main thread is inside native code), print `message` and exit with code 130."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are the main thread's (tests run commands in threads): leave them alone
        return
    reader, writer = socket.socketpair()
    reader.setblocking(True)
    writer.setblocking(False)
    done = threading.Event()

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data or done.is_set():
                return
            if any(n in (signal.SIGINT, signal.SIGTERM) for n in data) and not done.wait(grace_s):
                print(f"\nstopped: {message}", file=sys.stderr, flush=True)
                os._exit(EXIT_INTERRUPTED)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_term)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="labalign-stop-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_term)
        writer.close()  # wakes the watcher, which sees `done` and returns
        watcher.join(timeout=1.0)
        reader.close()
