"""Training checkpoints: atomic, the last K kept, everything needed to resume exactly.

``RUN/checkpoints/step-00000042/`` holds ``state/`` (model, optimizer, scheduler and every
process's RNG), ``model/`` (a native checkpoint that ``llavakit.load`` and ``serve`` read; under LoRA
only with ``lora.save_merged``), under LoRA ``adapter/`` (peft's adapter directory,
``checkpoint.adapter``) and ``trainer_state.json``, written last, which lists every file of the
checkpoint with its size.

A directory under a final name is always complete: it is assembled under a hidden name and renamed
into place; one it replaces (``--resume`` re-saving a step) is first renamed aside and removed only
once the new one is in place; one that is pruned is renamed to a hidden name before it is deleted.
A kill at any point leaves hidden leftovers that ``recover`` puts right: a replaced step whose
replacement never arrived is renamed back, everything else hidden is removed. A step whose files
do not match its list (a copy damaged outside llavakit) is never resumed from.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from llavakit.errors import LlavakitError
from llavakit.utils.atomic import atomic_write_json

STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def staging_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_root(run_dir) / f".{step_name(step)}.partial"


def replaced_dir(final: Path) -> Path:
    """Where a published step waits while its replacement is renamed in."""
    return final.with_name(f".{final.name}.replaced")


def file_sizes(directory: Path) -> dict[str, int]:
    """Every file under ``directory`` (relative POSIX path -> size in bytes)."""
    return {path.relative_to(directory).as_posix(): path.stat().st_size
            for path in sorted(directory.rglob("*")) if path.is_file()}


def is_complete(directory: Path) -> bool:
    """``trainer_state.json`` is readable and every file it lists is there with its size."""
    try:
        state = read_state(directory)
    except (OSError, ValueError):
        return False
    files = state.get("files")
    if not isinstance(files, dict):  # written before checkpoints listed their files
        return (directory / "state").is_dir() and (directory / "model").is_dir()
    for name, size in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def publish(run_dir: Path, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """List the staged files in trainer_state.json (written last), rename the staging directory
    into place (the step it replaces stays until then), prune old steps."""
    staging, final = staging_dir(run_dir, step), checkpoint_root(run_dir) / step_name(step)
    write_json_atomic(staging / STATE_FILE, {**trainer_state, "files": file_sizes(staging)})
    if final.exists():
        aside = replaced_dir(final)
        if aside.exists():
            discard(aside)
        os.replace(final, aside)
        os.replace(staging, final)
        discard(aside)
    else:
        os.replace(staging, final)
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        discard(old)
    return final


def discard(directory: Path) -> None:
    """Delete a directory; one under a final name is renamed to a hidden name first, so a kill
    during the deletion never leaves part of it under that name."""
    if not directory.name.startswith("."):
        hidden = directory.with_name(f".{directory.name}.discarded")
        if hidden.exists():
            shutil.rmtree(hidden)
        os.replace(directory, hidden)
        directory = hidden
    shutil.rmtree(directory, ignore_errors=True)


def recover(run_dir: Path) -> None:
    """Put right what a kill during saving left (main process only, before resuming or saving):
    a replaced step whose replacement is not in place goes back, incomplete steps and hidden
    leftovers go."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return
    for aside in root.glob(".step-*.replaced"):
        final = root / aside.name[1:].removesuffix(".replaced")
        if is_complete(final) or not is_complete(aside):
            discard(aside)
            continue
        if final.exists():
            discard(final)
        os.replace(aside, final)
    for leftover in root.iterdir():
        if leftover.name.startswith(".step-"):
            shutil.rmtree(leftover, ignore_errors=True)
        elif STEP_DIR.match(leftover.name) and not is_complete(leftover):
            print(f"checkpoint {leftover} is incomplete (files missing or cut short): removing it")
            discard(leftover)


class DiskFullError(LlavakitError):
    """Training output could not be written because its filesystem is full."""


# After a write failed for want of space, the filesystem has at most about this much left (the
# failing write took what there was); a write that failed for another reason leaves more.
FULL_BELOW_BYTES = 1 << 20


def out_of_space(error: BaseException, where: Path) -> bool:
    """``error`` came from a full filesystem: ENOSPC / EDQUOT anywhere in its chain, or a writer that
    reports no errno (torch's zip writer: "unexpected pos") on a filesystem with no space left."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "StorageFull" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    existing = next((p for p in (where, *where.parents) if p.exists()), None)
    return existing is not None and shutil.disk_usage(existing).free < FULL_BELOW_BYTES


@contextlib.contextmanager
def reporting_full_disk(where: Path, what: str, partial: Path | None = None) -> Iterator[None]:
    """Writing ``what`` under ``where``: a failure for want of space becomes one line naming the
    place; ``partial`` (a staging directory) is removed on any failure, freeing what it held."""
    try:
        yield
    except Exception as err:
        full = out_of_space(err, where)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        if full:
            raise DiskFullError(f"disk full: no space left on the filesystem of {where} while writing {what}; "
                                "earlier checkpoints are intact (free space, then resume with --resume)") from None
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


# What a training run writes into its output directory (removed when a new run replaces it).
# What a run writes into its folder (LoRA's adapter, in-loop evaluation's eval/ and best/, W&B's
# offline files and run id included), all of which --overwrite replaces.
RUN_FILES = ("checkpoints", "model", "adapter", "metrics.jsonl", "tensorboard", "summary.json", "skipped.jsonl",
             "config.json", "eval", "best", "wandb", "wandb-run-id")


def run_files(run_dir: Path) -> list[Path]:
    """The files and folders of a run already in ``run_dir``."""
    return [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]


def remove_run(run_dir: Path) -> None:
    for path in run_files(run_dir):
        if path.is_dir():
            discard(path)
        else:
            path.unlink()
