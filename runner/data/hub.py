"""`type: huggingface`: download a Hub dataset repo's images (and .txt captions) into a directory.

`huggingface_hub.snapshot_download` does the work: downloads resume, `HF_ENDPOINT` picks a
mirror, `HF_HUB_OFFLINE=1` forbids network access, `HF_TOKEN` authenticates, and
`HF_HUB_ETAG_TIMEOUT` bounds the metadata requests. Library errors become DatasetError
messages that say what to do.

Offline behaviour (what the unit tests cover without a network):
  * HF_HUB_OFFLINE=1 and an empty `dest` -> DatasetError naming repo and revision, quickly.
  * HF_HUB_OFFLINE=1 and a `dest` already holding the files (pre-downloaded, or a previous
    run) -> `dest` is returned as is.
  * HF_HUB_OFFLINE=1, empty `dest`, but the revision is in the regular Hub cache
    (HF_HUB_CACHE/datasets--owner--name/{refs,snapshots}, e.g. from `hf download`) -> the
    matching files are copied from that snapshot into `dest`.
  * An unreachable HF_ENDPOINT -> DatasetError (connection refused).
  * A real download is exercised against a small fake Hub HTTP server (repo info, tree
    listing, file resolve) via HF_ENDPOINT; the real Hub's API may drift from that fake.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from runner.data import DatasetError
from runner.data.discovery import IMAGE_EXTENSIONS, find_images

CAPTION_EXTENSIONS = (".txt",)


def allow_patterns(subfolder: str | None = None) -> list[str]:
    """fnmatch patterns for the image and caption files (both letter cases), under `subfolder`.
    (`*` also matches `/` in huggingface_hub's matcher, so these are recursive.)"""
    prefix = f"{subfolder.strip('/')}/" if subfolder and subfolder.strip("/") else ""
    patterns = []
    for ext in IMAGE_EXTENSIONS + CAPTION_EXTENSIONS:
        for variant in dict.fromkeys((ext, ext.upper())):
            patterns.append(f"{prefix}*{variant}")
    return patterns


def _where(repo: str, revision: str, subfolder: str | None) -> str:
    text = f"Hub dataset {repo!r} at revision {revision!r}"
    return text + (f" (subfolder {subfolder!r})" if subfolder else "")


def _endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:
        return "https://huggingface.co"


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _fetch_hint(repo: str, revision: str, dest: Path) -> str:
    return (f"pre-download the files into {dest} "
            f"(e.g. `hf download {repo} --repo-type dataset --revision {revision} --local-dir {dest}`)")


def _copy_from_hub_cache(repo: str, revision: str, dest: Path, patterns: list[str]) -> bool:
    """Offline fallback: copy the files of a snapshot in the regular Hub cache into dest."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    try:
        snapshot = Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision,
                                          allow_patterns=patterns, local_files_only=True))
    except Exception:
        return False
    files = [p for p in snapshot.rglob("*") if p.is_file()]
    rels = set(filter_repo_objects(items=[p.relative_to(snapshot).as_posix() for p in files],
                                   allow_patterns=patterns))
    copied = 0
    for p in files:
        rel = p.relative_to(snapshot).as_posix()
        if rel not in rels:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(p, tmp)  # follows the snapshot's symlinks into blobs/
        tmp.replace(target)
        copied += 1
    return copied > 0


def download_dataset(repo: str, revision: str, dest: Path, subfolder: str | None = None) -> Path:
    """Download the images and .txt captions of Hub dataset `repo` at `revision` into `dest`
    (resumable), keeping the repo's layout. Returns `dest`; with `subfolder` only files under
    it are fetched and the images are under `dest / subfolder` (checked to hold at least one).
    Raises DatasetError with a user-facing message on any failure."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise DatasetError("type: huggingface needs huggingface_hub; pip install 'trainingjob-runner[train]'") from None

    dest = Path(dest)
    where = _where(repo, revision, subfolder)
    patterns = allow_patterns(subfolder)
    fixes = (f"check spec.datasets[].repo/revision, set HF_ENDPOINT to use a mirror, unset HF_HUB_OFFLINE, "
             f"or {_fetch_hint(repo, revision, dest)}")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"{where}: cannot create {dest} ({e.strerror or e})") from None

    try:
        snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, local_dir=dest,
                          allow_patterns=patterns, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except hf_errors.GatedRepoError:
        raise DatasetError(f"{where} is gated: accept its terms on the Hub and provide a token "
                           "(HF_TOKEN, see spec.output.hub.tokenEnv / kubernetes.secrets.hubToken)") from None
    except hf_errors.RepositoryNotFoundError:
        raise DatasetError(f"{where}: repository not found on {_endpoint()} (or it is private and no valid "
                           "token was given); check the repo id (a dataset repo, owner/name) and HF_TOKEN") from None
    except hf_errors.RevisionNotFoundError:
        raise DatasetError(f"{where}: revision {revision!r} does not exist in the repo; "
                           "use a branch, tag or commit of the dataset repo") from None
    except hf_errors.LocalEntryNotFoundError as e:  # offline or unreachable, nothing usable on disk
        if _copy_from_hub_cache(repo, revision, dest, patterns):
            return _result(dest, subfolder, where, fixes)
        cause = e.__cause__ or e
        if _offline():
            reason = f"HF_HUB_OFFLINE is set, and the files are neither in {dest} nor in the Hub cache ({constants.HF_HUB_CACHE})"
        elif isinstance(cause, hf_errors.HfHubHTTPError):
            reason = f"the Hub at {_endpoint()} answered with an error ({_short(cause)})"
        else:
            reason = f"the Hub at {_endpoint()} could not be reached ({_short(cause)})"
        raise DatasetError(f"{where}: cannot download: {reason}. Fix: {fixes}") from None
    except hf_errors.HFValidationError as e:
        raise DatasetError(f"{where}: invalid repo id or revision ({_short(e)})") from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise DatasetError(f"{where}: the Hub at {_endpoint()} answered HTTP {status or '?'} ({_short(e)}). "
                           f"Fix: retry later, or {fixes}") from None
    except (OSError, ConnectionError, TimeoutError) as e:
        raise DatasetError(f"{where}: download failed ({type(e).__name__}: {_short(e)}). Fix: check the network "
                           f"and free disk space under {dest}, or {fixes}") from None
    except Exception as e:  # httpx errors and other transport failures
        raise DatasetError(f"{where}: download failed ({type(e).__name__}: {_short(e)}). Fix: {fixes}") from None
    return _result(dest, subfolder, where, fixes)


def _result(dest: Path, subfolder: str | None, where: str, fixes: str) -> Path:
    root = dest / subfolder.strip("/") if subfolder and subfolder.strip("/") else dest
    if not root.is_dir() or not find_images(root):
        raise DatasetError(f"{where}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root} after download; "
                           f"check the subfolder and that the repo holds image files. Fix: {fixes}")
    return dest


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
