"""Kill a `llavakit curate` run at the worst moment, from the test side (the library has no crash hook).

The run executes in a child Python that wraps ``llavakit.curate.stream.save_state`` and sends
itself SIGKILL just before the N-th checkpoint of the run is written: the N-th chunk has been
processed and its output made durable, but the state on disk still says N-1 chunks. With
``--checkpoint-seconds 0`` every chunk is checkpointed, so N counts chunks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

_CHILD = """
import os, signal, sys
from llavakit.cli import main
from llavakit.curate import stream

kill_at, args = int(sys.argv[1]), sys.argv[2:]
real_save, calls = stream.save_state, 0

def save_state(*a, **k):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(*a, **k)

stream.save_state = save_state
raise SystemExit(main(["curate", *args]))
"""

KILLED = -signal.SIGKILL  # subprocess's return code for a child killed by SIGKILL


def killed_before_checkpoint(kill_at: int, *args) -> subprocess.CompletedProcess:
    """Run ``llavakit curate ARGS`` and kill it just before its ``kill_at``-th checkpoint."""
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(kill_at), *map(str, args)],
        env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
