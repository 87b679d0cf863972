"""Ctrl-C and `kill` end a command within seconds even while it sits in one long native call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labalign.dirlock import locked
from labalign.errors import LabalignError
from tests.conftest import repo_root

# pbkdf2 with 10**9 rounds is one C call of minutes that no signal interrupts: the case of a training
# step's backward pass or a llama.cpp batch decode.
SCRIPT = """
import hashlib, sys
from labalign.interrupts import stop_promptly
with stop_promptly("run the same command again to resume", grace_s=1.0):
    print("ready", flush=True)
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)
print("finished", flush=True)
"""

CLEAN = """
import sys, time
from labalign.interrupts import stop_promptly
try:
    with stop_promptly("again", grace_s=5.0):
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
except KeyboardInterrupt:
    print("clean exit", flush=True)
    sys.exit(3)
"""


def _start(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(repo_root() / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
        # Python then leaves it so: give the child the terminal's default, as Ctrl-C would find it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_long_native_call_ends_the_process_within_seconds(sig: signal.Signals) -> None:
    proc = _start(SCRIPT)
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130 and "finished" not in out
    assert err.strip() == "stopped: run the same command again to resume"  # one line, no traceback


def test_python_code_takes_the_clean_path() -> None:
    proc = _start(CLEAN)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "clean exit" in out and "stopped" not in err


def test_a_second_command_on_a_locked_directory_is_refused(tmp_path: Path) -> None:
    with (
        locked(tmp_path / "out", what="labalign generate"),
        pytest.raises(LabalignError, match="another labalign generate is working"),
        locked(tmp_path / "out", what="labalign generate"),
    ):
        pass
    with locked(tmp_path / "out"):  # released on exit
        pass
