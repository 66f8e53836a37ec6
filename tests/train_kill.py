"""Run ``llavakit train`` and kill it with SIGKILL at a chosen moment, from the test's side.

    python tests/train_kill.py EVENT N -- CONFIG.yaml [--resume] ...

The process SIGKILLs itself at the N-th occurrence of EVENT (counted in this process):

- ``step``: before an optimizer step starts;
- ``write``: in the middle of writing a checkpoint file (the file is cut to half its size first);
- ``rename``: before a checkpoint step directory is renamed (publishing, replacing, pruning);
- ``delete``: in the middle of deleting a directory under ``checkpoints/`` (one file gone);
- ``load``: after ``--resume`` read a checkpoint, before training goes on;
- ``time``: N tenths of a second after start, whatever it is doing then.

Nothing here is in the library: the hooks wrap library functions in this process only.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path

EVENTS = ("step", "write", "rename", "delete", "load", "time")


def kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Trigger:
    def __init__(self, event: str, count: int):
        self.event, self.count, self.seen = event, count, 0

    def hit(self, event: str) -> bool:
        if event != self.event:
            return False
        self.seen += 1
        return self.seen == self.count


def _under_checkpoints(path) -> bool:
    return "checkpoints" in Path(str(path)).parts


def _cut_and_kill(path) -> None:
    path = Path(str(path))
    if path.is_file():
        with path.open("r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    kill()


def install(trigger: Trigger) -> None:
    import shutil

    import accelerate.utils.other as accelerate_other
    import safetensors.torch
    import torch

    import llavakit.checkpoint.io as checkpoint_io
    from llavakit.train import distributed, loop

    if trigger.event == "time":
        threading.Timer(trigger.count / 10, kill).start()
        return

    def writer(original):
        @functools.wraps(original)
        def wrapped(obj, target, *args, **kwargs):
            result = original(obj, target, *args, **kwargs)
            if isinstance(target, (str, os.PathLike)) and _under_checkpoints(target) and trigger.hit("write"):
                _cut_and_kill(target)
            return result
        return wrapped

    torch.save = writer(torch.save)
    safetensors.torch.save_file = writer(safetensors.torch.save_file)
    accelerate_other.safe_save_file = writer(accelerate_other.safe_save_file)
    checkpoint_io.save_file = writer(checkpoint_io.save_file)

    original_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(str(target)).parent.name == "checkpoints" and trigger.hit("rename"):
            kill()
        return original_replace(source, target, *args, **kwargs)

    os.replace = replace

    original_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if _under_checkpoints(path) and trigger.hit("delete"):
            files = sorted(p for p in Path(str(path)).rglob("*") if p.is_file())
            if files:
                files[len(files) // 2].unlink()
            kill()
        return original_rmtree(path, *args, **kwargs)

    rmtree.avoids_symlink_attacks = original_rmtree.avoids_symlink_attacks
    shutil.rmtree = rmtree

    original_step = loop.Trainer.train_step

    def train_step(self, step):
        if trigger.hit("step"):
            kill()
        return original_step(self, step)

    loop.Trainer.train_step = train_step

    for backend in (distributed.AccelerateBackend, distributed.CpuFsdpBackend):
        original_load = backend.__dict__["load_state"]

        def load_state(self, *args, _original=original_load, **kwargs):
            _original(self, *args, **kwargs)
            if trigger.hit("load"):
                kill()

        backend.load_state = load_state


def main(argv: list[str]) -> int:
    event, count, separator, *train_args = argv
    assert event in EVENTS and separator == "--", argv
    install(Trigger(event, int(count)))
    from llavakit.cli import main as cli_main

    return cli_main(["train", *train_args])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
