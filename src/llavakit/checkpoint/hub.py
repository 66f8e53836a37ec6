"""Hub ids: found in the local cache, or refused at once when the hub cannot supply them.

A download that cannot succeed should say so before anything starts, in one line naming the id:
offline (``HF_HUB_OFFLINE=1``) the local cache is the only source; online, one metadata request
with a short timeout (``HF_HUB_ETAG_TIMEOUT``, the hub client's own knob for such requests) tells
whether the hub answers, instead of a download's retries against a network that is not there.
"""

from __future__ import annotations

from pathlib import Path

from llavakit.errors import CheckpointError


def is_hub_id(text: str) -> bool:
    """``org/name`` that is not a local path (absolute, relative with ``.``, home, or existing)."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).expanduser().exists()


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of ``repo_id`` in the hub cache, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except HFValidationError as err:
        raise CheckpointError(f"{repo_id!r}: not a directory and not a valid hub id ({one_line(err)})") from None


def locate(repo_id: str, what: str = "checkpoint") -> Path | None:
    """The cached snapshot of ``repo_id``; None when not cached but the hub has it (a download will
    work); ``CheckpointError`` naming the id when neither, without retries."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None:
        return snapshot
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    missing = f"{what} {repo_id!r}: not a local directory nor in the hub cache"
    if constants.is_offline_mode():
        raise CheckpointError(f"{missing}, and HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RepositoryNotFoundError:
        raise CheckpointError(f"{missing}, and the hub has no such model (or it is private: log in first)") from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"{missing}, and the hub refused it ({one_line(err)})") from None
    except Exception as err:  # no network, DNS, proxy, a silent host: the client raises many types
        raise CheckpointError(f"{missing}, and the hub cannot be reached ({type(err).__name__}: {one_line(err)}); "
                              "set HF_HUB_OFFLINE=1 to use the cache only") from None
    return None


def require(path_or_id: str, what: str) -> None:
    """Refuse now a model reference that cannot be loaded: a missing directory, an unavailable hub id."""
    if Path(path_or_id).expanduser().is_dir():
        return
    if not is_hub_id(path_or_id):
        raise CheckpointError(f"{what} {path_or_id!r}: no such directory")
    locate(path_or_id, what)


def one_line(err: BaseException) -> str:
    """An exception's message with its line breaks folded (hub client messages span several lines)."""
    return " ".join(str(err).split())
