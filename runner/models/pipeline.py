"""Diffusers pipeline folders, whatever the family: find the one a spec names (a builtin, a
local folder, or a Hub id downloaded with retries and checked whole) and write one back with a
trained component swapped in. Imports torch only in the functions that need it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from runner.files import atomic_write_bytes, give_usual_modes, replace_dir
from runner.spec.errors import clip
from runner.spec.localpaths import pretrained_problem

DTYPES = ("float32", "bfloat16", "float16")  # spec dtype names, which are also torch's


class ModelError(Exception):
    """A model that cannot be found or loaded; the message says what to do."""


def torch_dtype(name: str) -> Any:
    """The torch dtype of a spec dtype name (`bfloat16`)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return getattr(torch, name)


def resolve_model_dir(ref: str, revision: str, cache_dir: Path, components: Sequence[str], **retry) -> Path:
    """A local folder holding the diffusers pipeline `ref` names (builtin, local dir or Hub id).
    `components`: the pipeline's subfolders, the files downloaded for a Hub id. `retry`:
    `retries` and `backoff_s` of runner.data.hub.fetch_snapshot, for a Hub id."""
    from runner.models import tiny

    if tiny.is_builtin(ref):
        try:
            return tiny.resolve_builtin(ref, cache_dir)
        except ValueError as e:
            raise ModelError(f"spec.model.pretrained: {e}") from None
    if problem := pretrained_problem(ref):  # validate reports the same
        raise ModelError(problem)
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    patterns = ["model_index.json"] + [f"{c}/*" for c in components]
    return Path(_download_pipeline(ref, revision, patterns, **retry))


def _download_pipeline(ref: str, revision: str, patterns: list[str], **retry) -> str:
    """The pipeline's files in the Hub cache, for Hub id `ref`. Offline: what the cache holds.
    Online: model_index.json first (a request with a timeout that huggingface_hub retries with
    backoff itself, and which records the branch's commit for later offline runs), then every
    pipeline file of that commit, transient failures retried and the result checked whole."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from runner.data import HubUnavailable
    from runner.data.hub import IncompleteDownload, fetch_snapshot, is_transient

    what = f"spec.model.pretrained: {ref}@{revision}"
    fixes = ("set HF_ENDPOINT to use a mirror, HF_TOKEN if the repo is gated or private, or download it first "
             f"(`hf download {ref} --revision {revision}`) and run with HF_HUB_OFFLINE=1, or point pretrained at a local folder")
    try:
        if constants.HF_HUB_OFFLINE:
            return snapshot_download(repo_id=ref, revision=revision, allow_patterns=patterns)
        index = hf_hub_download(ref, "model_index.json", revision=revision, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
        commit = Path(index).parent.name  # <cache>/models--owner--name/snapshots/<commit>/model_index.json
        return str(fetch_snapshot(ref, commit, repo_type="model", patterns=patterns, **retry)[0])
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelError(f"{what} not found on the Hub ({type(e).__name__}); "
                         "check the repo id and revision, and the token (HF_TOKEN) if the repo is gated") from None
    except IncompleteDownload as e:
        raise HubUnavailable(f"{what}: the download stayed incomplete after retries ({e}); nothing partial is used, "
                             f"rerun to resume it. Fix: check the network, or {fixes}") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ModelError(f"{what} is not (completely) in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             f"unset it to download, or {fixes}") from None
        raise HubUnavailable(f"{what}: the Hub at {constants.ENDPOINT} cannot be reached, and the model is not in "
                             f"the local cache. Fix: {fixes}") from None
    except Exception as e:  # noqa: BLE001 - HTTP 5xx, timeouts, dropped connections, disk errors: all worded here
        tried = " (after retries)" if is_transient(e) else ""
        status = getattr(getattr(e, "response", None), "status_code", None) if isinstance(e, HfHubHTTPError) else None
        how = f"answered HTTP {status}" if status else f"failed ({type(e).__name__}: {clip(' '.join(str(e).split()), 300)})"
        failed = HubUnavailable if tried else ModelError  # still transient after the retries: a later try may work
        raise failed(f"{what}: downloading from the Hub at {constants.ENDPOINT} {how}{tried}. Fix: {fixes}") from None


# ----------------------------------------------------------------------------- export

# Weight files: what makes an export big, and what save_pretrained replaces (safetensors writes
# a new file and renames it) rather than writing into. The configs and tokenizer files it does
# write into in place, so those are copied: a few MB per export.
_LINKED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _link_or_copy(src: str, dst: str) -> None:
    """A weight file as a hard link where the file system allows (same volume), anything else
    or elsewhere as a copy. The unchanged weights (a T5-XXL text encoder is 10-20 GB) then cost
    no disk per export, but the export, every other export of that base and the base itself
    share those files: nothing may write into one in place. The runner never does (it writes
    new files and renames them over, which replaces a link); README.md says so to users."""
    if src.endswith(_LINKED_SUFFIXES):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def export_pipeline(base_dir: Path, model, dest: Path, component: str = "transformer",
                    files: Mapping[str, bytes] | None = None) -> Path:
    """`dest` = the base pipeline with its `component` subfolder replaced by `model`, plus
    `files` (name: content) at its top, over any of the base's of that name.

    Built in a temp folder and renamed, so `dest` is always either the previous complete
    export or the new one, never one without its `files`. Loads with the pipeline class's
    `from_pretrained(dest)`."""
    base_dir = Path(base_dir)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for entry in base_dir.iterdir():
        if entry.name in (component, ".cache") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry.resolve()), str(tmp / entry.name))
    model.save_pretrained(tmp / component, safe_serialization=True)
    for name, data in (files or {}).items():
        atomic_write_bytes(tmp / name, data)  # renamed over a copied file of the base's, never written into
    give_usual_modes(tmp)  # folders and weights of its own; the linked files keep the base's modes
    return replace_dir(tmp, dest)
