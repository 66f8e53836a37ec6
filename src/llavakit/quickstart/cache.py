"""A directory cache of trained components, keyed by a hash of everything that shapes the weights.

An entry is built in a hidden ``.partial-*`` directory and renamed into place only when complete,
so an entry that exists is whole: a killed run leaves at most a partial directory, which the next
call removes once the process that wrote it is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

MANIFEST = "component.json"
PARTIAL = re.compile(r"^\.partial-(?P<name>[a-z]+)-(?P<key>[0-9a-f]+)-(?P<pid>\d+)-")


def cache_key(data: dict) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    path: Path
    manifest: dict  # {"name", "key", "key_data", "metrics"}
    hit: bool  # True when it was already in the cache


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_partials(cache_dir: Path) -> list[Path]:
    """Delete partial entries whose writer has exited (killed mid-training); return them."""
    removed = []
    for path in cache_dir.glob(".partial-*"):
        match = PARTIAL.match(path.name)
        if match and not _process_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def lookup(cache_dir: Path, name: str, key: str) -> Entry | None:
    path = Path(cache_dir) / f"{name}-{key}"
    manifest = path / MANIFEST
    if manifest.is_file():
        return Entry(path, json.loads(manifest.read_text(encoding="utf-8")), hit=True)
    if path.exists():
        raise RuntimeError(
            f"cache entry {path} exists but has no {MANIFEST}; it was not written by llavakit. Delete it to retrain."
        )
    return None


def cached_build(cache_dir: Path, name: str, key_data: dict, build: Callable[[Path], dict]) -> Entry:
    """The entry for ``key_data``: from the cache, or made by ``build(directory) -> metrics``."""
    cache_dir = Path(cache_dir)
    key = cache_key(key_data)
    found = lookup(cache_dir, name, key)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One builder per entry: a second process (a lab's parallel runs) waits for the first's entry
    # instead of training the same component again.
    with FileLock(str(cache_dir / f".{name}-{key}.lock")):
        found = lookup(cache_dir, name, key)
        return found if found is not None else _build(cache_dir, name, key, key_data, build)


def _build(cache_dir: Path, name: str, key: str, key_data: dict, build: Callable[[Path], dict]) -> Entry:
    remove_stale_partials(cache_dir)
    partial = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".partial-{name}-{key}-{os.getpid()}-"))
    final = cache_dir / f"{name}-{key}"
    try:
        manifest = {"name": name, "key": key, "key_data": key_data, "metrics": build(partial)}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(partial, final)  # atomic: the entry appears whole or not at all
        except OSError:
            found = lookup(cache_dir, name, key)  # another process finished the same entry first
            if found is None:
                raise
            shutil.rmtree(partial, ignore_errors=True)
            return found
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return Entry(final, manifest, hit=False)
