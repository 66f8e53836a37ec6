"""Chunked, resumable passes over record files.

A pass reads records in chunks (never across files), folds each chunk into its running state and,
at checkpoints, writes that state atomically to one ``.state.npz`` file: the input position (file,
byte offset, line), JSON metadata and numpy arrays. A killed run restarts from the last checkpoint;
anything it did after that checkpoint is redone identically, so nothing is lost or duplicated. The
state names the inputs (path, size, mtime) and options it belongs to and is refused otherwise.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llavakit.curate.errors import CurationError
from llavakit.curate.files import atomic_write_bytes
from llavakit.curate.records import Record, iter_records

@dataclass(frozen=True)
class Position:
    file: int = 0  # index into the input list
    offset: int = 0  # byte offset in that file
    line: int = 1  # line number at that offset, for error messages
    records: int = 0  # records read so far, all files


@dataclass
class State:
    position: Position
    meta: dict
    arrays: dict[str, np.ndarray]


def inputs_fingerprint(paths: list[str | Path]) -> list[dict]:
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise CurationError(f"{p}: input file not found")
        st = os.stat(p)
        out.append({"path": str(Path(p).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def load_state(path: Path, identity: dict) -> State | None:
    """The checkpoint at ``path`` if there is one; refused if made for another identity."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(str(z["__state__"]))
            arrays = {k: z[k] for k in z.files if k != "__state__"}
    except (OSError, ValueError, KeyError) as e:
        raise CurationError(f"{path}: unreadable checkpoint ({e}); pass --restart to start over") from None
    if head.get("identity") != json.loads(json.dumps(identity)):
        raise CurationError(
            f"{path}: checkpoint of a run with other inputs or options; pass --restart to start over (or delete it)"
        )
    return State(Position(**head["position"]), head["meta"], arrays)


def save_state(path: Path, identity: dict, state: State) -> None:
    head = {"identity": identity, "position": asdict(state.position), "meta": state.meta}
    buf = io.BytesIO()
    np.savez(buf, __state__=np.array(json.dumps(head)), **state.arrays)
    atomic_write_bytes(path, buf.getvalue())


def iter_chunks(paths: list[str | Path], start: Position, chunk_size: int) -> Iterator[tuple[list[Record], Position]]:
    """Chunks of at most ``chunk_size`` records from ``start`` on, each with the position after it."""
    records = start.records
    for i in range(start.file, len(paths)):
        offset, line = (start.offset, start.line) if i == start.file else (0, 1)
        chunk: list[Record] = []
        for rec in iter_records(paths[i], offset, line):
            chunk.append(rec)
            if len(chunk) == chunk_size:
                records += len(chunk)
                yield chunk, Position(i, rec.end, rec.next_line, records)
                chunk = []
        if chunk:
            records += len(chunk)
            yield chunk, Position(i, chunk[-1].end, chunk[-1].next_line, records)


def bytes_done(sizes: list[int], pos: Position) -> int:
    return sum(sizes[: pos.file]) + pos.offset


@dataclass(frozen=True)
class PassOptions:
    chunk_size: int = 10_000  # records per chunk (does not change results)
    checkpoint_seconds: float = 30.0  # 0: checkpoint after every chunk (does not change results)
    desc: str = ""
    quiet: bool = False


def run_pass(
    inputs: list[str | Path],
    identity: dict,
    state: State,
    state_file: Path,
    process: Callable[[list[Record], str | Path], None],
    options: PassOptions,
    sync: Callable[[], None] | None = None,
) -> State:
    """Feed every chunk from ``state.position`` on to ``process(chunk, path)``, which folds it into
    ``state``; checkpoint the state (after ``sync``, which makes the pass's own output durable).
    ``state.meta`` must hold "pairs" and "seconds"."""
    sizes = [f["size"] for f in identity["inputs"]]
    bar = tqdm(
        total=sum(sizes),
        initial=bytes_done(sizes, state.position),
        unit="B",
        unit_scale=True,
        desc=options.desc,
        disable=True if options.quiet else None,
        dynamic_ncols=True,
    )
    t0 = last_save = time.monotonic()
    with bar:
        for chunk, pos in iter_chunks(inputs, state.position, options.chunk_size):
            process(chunk, inputs[pos.file])
            state.position = pos
            if time.monotonic() - last_save >= options.checkpoint_seconds:
                if sync is not None:
                    sync()
                state.meta["seconds"] += time.monotonic() - t0
                t0 = last_save = time.monotonic()
                save_state(state_file, identity, state)
            bar.update(bytes_done(sizes, pos) - bar.n)
            bar.set_postfix(pairs=state.meta["pairs"], refresh=False)
    state.meta["seconds"] += time.monotonic() - t0
    return state
