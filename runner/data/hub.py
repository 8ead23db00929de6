"""`type: huggingface`: download a Hub dataset repo's images (and .txt captions) into a directory.

`huggingface_hub.snapshot_download` does the work: downloads resume, `HF_ENDPOINT` picks a
mirror, `HF_HUB_OFFLINE=1` forbids network access, `HF_TOKEN` authenticates,
`HF_HUB_ETAG_TIMEOUT` bounds the metadata requests and `HF_HUB_DOWNLOAD_TIMEOUT` each read of a
file. Library errors become DatasetError messages that say what to do, or HubUnavailable
(exit 1, the pod is retried) for failures still transient after the retries.

Failures of the Hub (`fetch_snapshot`, also used for models):
  * huggingface_hub retries its per-file metadata requests (5xx, timeouts) and resumes a file
    whose connection drops. It does not retry the repo-info request (and gives it no timeout,
    so a stalled Hub would hang the job) nor a file request answered 5xx. So the revision is
    resolved here, with HF_HUB_ETAG_TIMEOUT, and each transient failure (5xx, 408, 429,
    timeouts, dropped connections, a download that came back incomplete) is retried: `retries`
    times, waiting `backoff_s`, then twice as long each time (capped at a minute). When the
    Hub's answer says how long to wait (a Retry-After header, as with 429 and 503), that is
    the wait instead, capped at a minute too.
  * Nothing half-downloaded is used: huggingface_hub writes each file under a temp name, and
    the folder is used only once every file the Hub lists for that commit is there at its
    listed size. `dest/.cache/trainingjob-download.json` records that check (repo, commit,
    patterns, sizes), so a rerun, offline or with the Hub down, can trust the folder.

Offline (HF_HUB_OFFLINE=1), or the Hub still failing after the retries:
  * `dest` holding a download recorded complete for this repo/revision/patterns -> used.
  * `dest` holding images put there by other means (not by huggingface_hub: no
    `dest/.cache/huggingface`) -> used as is: a pre-downloaded dataset (offline only).
  * `dest` holding an unfinished download -> DatasetError naming the missing files.
  * the revision in the regular Hub cache (HF_HUB_CACHE, e.g. from `hf download`) -> its
    matching files are copied into `dest` (offline only).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from runner.data import DatasetError, HubUnavailable
from runner.data.discovery import IMAGE_EXTENSIONS, find_images
from runner.files import atomic_write_json
from runner.spec.errors import clip

CAPTION_EXTENSIONS = (".txt",)
HUB_RETRIES = 4  # after the first attempt: waits of 2, 4, 8 and 16 s with the default backoff
HUB_BACKOFF_S = 2.0
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
MARKER = Path(".cache") / "trainingjob-download.json"  # hidden: discovery never lists it


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
    _write_marker(dest, {"repo": repo, "revision": revision, "patterns": patterns, "complete": False})
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
    sizes = {p.relative_to(snapshot).as_posix(): p.stat().st_size for p in files if p.relative_to(snapshot).as_posix() in rels}
    _write_marker(dest, {"repo": repo, "revision": revision, "patterns": patterns, "commit": snapshot.name,
                         "complete": True, "files": sizes})
    return copied > 0


class IncompleteDownload(Exception):
    """snapshot_download returned, but files the Hub lists are missing or short."""


def is_transient(error: BaseException) -> bool:
    """Worth another try: the Hub overloaded or down for a moment, a timeout, a dropped
    connection, a download that came back incomplete. Not: not found, gated, bad token."""
    from huggingface_hub import errors as hf_errors

    if isinstance(error, IncompleteDownload):
        return True
    if isinstance(error, hf_errors.OfflineModeIsEnabled):  # a ConnectionError, but HF_HUB_OFFLINE stays set
        return False
    if isinstance(error, hf_errors.HfHubHTTPError):
        return getattr(error.response, "status_code", None) in TRANSIENT_STATUS
    if isinstance(error, hf_errors.LocalEntryNotFoundError):  # the library's "unreachable" wrapper
        return not _offline() and error.__cause__ is not None and is_transient(error.__cause__)
    try:
        import httpx2

        if isinstance(error, httpx2.TransportError):  # connect/read timeouts, refused, dropped
            return not isinstance(error, httpx2.ProxyError)
    except ImportError:
        pass
    if isinstance(error, OSError) and "Consistency check failed" in str(error):  # a short file
        return True
    return isinstance(error, (ConnectionError, TimeoutError))


MAX_WAIT_S = 60.0  # the longest wait between tries, whatever the backoff or the Hub asks


def retry_after_s(error: BaseException) -> float | None:
    """The seconds the Hub asked to wait before the next try (a Retry-After header in seconds or
    as an HTTP date, on the error's response or on the one it was raised from), or None."""
    from email.utils import parsedate_to_datetime

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        headers = getattr(getattr(error, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if isinstance(value, str) and value.strip():
            try:
                seconds = float(value.strip())
            except ValueError:
                try:
                    seconds = parsedate_to_datetime(value).timestamp() - time.time()
                except (TypeError, ValueError, IndexError):
                    return None
            return max(0.0, seconds) if seconds == seconds else None  # NaN: no usable answer
        error = error.__cause__ or error.__context__
    return None


def with_retries(call: Callable[[], Any], what: str, retries: int = HUB_RETRIES, backoff_s: float = HUB_BACKOFF_S,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                 sleep: Callable[[float], None] | None = None) -> Any:
    """`call()`, tried again after transient failures with exponential backoff, or after the wait
    the Hub's Retry-After asks for (see module doc for why huggingface_hub's own retries are not
    enough). `sleep` (time.sleep when None) lets tests count the waits instead of waiting."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as e:
            if attempt == retries or not is_transient(e):
                raise
            asked = retry_after_s(e)
            wait = min(backoff_s * 2 ** attempt if asked is None else asked, MAX_WAIT_S)
            why = "" if asked is None else " (the Hub's Retry-After)"
            log(f"{what}: {type(e).__name__}: {_short(e, 200)}; retrying in {wait:g}s{why} ({attempt + 1}/{retries})")
            (sleep or time.sleep)(wait)


def resolve_commit(repo: str, revision: str, *, repo_type: str, retries: int = HUB_RETRIES,
                   backoff_s: float = HUB_BACKOFF_S) -> str:
    """The commit `revision` names, asked with HF_HUB_ETAG_TIMEOUT (snapshot_download's own
    repo-info request has no timeout at all) and retried."""
    from huggingface_hub import HfApi, constants

    return with_retries(lambda: HfApi().repo_info(repo, repo_type=repo_type, revision=revision,
                                                  timeout=constants.HF_HUB_ETAG_TIMEOUT).sha,
                        f"{repo_type} {repo}@{revision}", retries, backoff_s)


def fetch_snapshot(repo: str, commit: str, *, repo_type: str, patterns: list[str], local_dir: Path | None = None,
                   retries: int = HUB_RETRIES, backoff_s: float = HUB_BACKOFF_S) -> tuple[Path, dict[str, int]]:
    """Download the files of `repo` at `commit` matching `patterns` (into `local_dir`, or the
    Hub cache), retrying transient failures, and check every listed file arrived whole.
    Returns (folder, {file: size}). Library errors propagate for the caller to word."""
    from huggingface_hub import constants, snapshot_download

    def fetch() -> tuple[Path, dict[str, int]]:
        folder = Path(snapshot_download(repo_id=repo, repo_type=repo_type, revision=commit, local_dir=local_dir,
                                        allow_patterns=patterns, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT))
        return folder, listed_files_present(repo, repo_type, commit, folder, patterns, local_dir)

    return with_retries(fetch, f"{repo_type} {repo}@{commit[:12]}", retries, backoff_s)


def listed_files_present(repo: str, repo_type: str, commit: str, folder: Path, patterns: list[str],
                         local_dir: Path | None) -> dict[str, int]:
    """{file: size} of every file the Hub's listing of `commit` has under `patterns`, each
    checked present in `folder` at that size. snapshot_download returns the folder as it is
    when the Hub fails mid-way, so this is what stands between a half download and the run."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    try:
        listing = get_cached_repo_tree(repo, repo_type=repo_type, revision=commit, local_dir=local_dir)
    except CachedRepoTreeNotFoundError:
        raise IncompleteDownload(f"the Hub's file listing of {repo}@{commit[:12]} never arrived") from None
    sizes = {f.path: f.size for f in filter_repo_objects(items=listing, allow_patterns=patterns, key=lambda f: f.path)}
    bad = _missing(folder, sizes)
    if bad:
        raise IncompleteDownload(f"{len(bad)} file(s) missing or incomplete: {', '.join(bad[:3])}"
                                 + (" ..." if len(bad) > 3 else ""))
    return sizes


def _missing(folder: Path, sizes: dict[str, int]) -> list[str]:
    def ok(rel: str, size: int) -> bool:
        try:
            return (folder / rel).stat().st_size == size
        except OSError:
            return False

    return sorted(rel for rel, size in sizes.items() if not ok(rel, size))


def _read_marker(dest: Path) -> dict[str, Any]:
    try:
        data = json.loads((dest / MARKER).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_marker(dest: Path, record: dict[str, Any]) -> None:
    atomic_write_json(dest / MARKER, record)


def _recorded_complete(dest: Path, repo: str, revision: str, patterns: list[str], commit: str | None = None) -> bool:
    """dest holds a download checked complete for this repo, revision and patterns (and
    `commit`, when given), and its files are all still there."""
    m = _read_marker(dest)
    return (m.get("complete") is True and m.get("repo") == repo and m.get("revision") == revision
            and m.get("patterns") == patterns and commit in (None, m.get("commit"))
            and isinstance(m.get("files"), dict) and not _missing(dest, m["files"]))


def download_dataset(repo: str, revision: str, dest: Path, subfolder: str | None = None, *,
                     retries: int = HUB_RETRIES, backoff_s: float = HUB_BACKOFF_S) -> Path:
    """Download the images and .txt captions of Hub dataset `repo` at `revision` into `dest`
    (resumable), keeping the repo's layout. Returns `dest`; with `subfolder` only files under
    it are fetched and the images are under `dest / subfolder` (checked to hold at least one).
    Transient Hub failures are retried `retries` times, the first after `backoff_s` seconds.
    Raises DatasetError with a user-facing message on any failure."""
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise DatasetError("type: huggingface needs huggingface_hub; pip install 'trainingjob-runner[train]'") from None

    dest = Path(dest)
    where = _where(repo, revision, subfolder)
    patterns = allow_patterns(subfolder)
    fixes = (f"check spec.datasets[].repo/revision, set HF_ENDPOINT to use a mirror, set HF_TOKEN if the repo is "
             f"private or gated, unset HF_HUB_OFFLINE, or {_fetch_hint(repo, revision, dest)}")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"{where}: cannot create {dest} ({e.strerror or e})") from None

    if _offline():
        return _use_local(repo, revision, dest, subfolder, patterns, where, fixes)
    try:
        commit = resolve_commit(repo, revision, repo_type="dataset", retries=retries, backoff_s=backoff_s)
        if not _recorded_complete(dest, repo, revision, patterns, commit):
            _write_marker(dest, {"repo": repo, "revision": revision, "patterns": patterns, "commit": commit,
                                 "complete": False})
            _, sizes = fetch_snapshot(repo, commit, repo_type="dataset", patterns=patterns, local_dir=dest,
                                      retries=retries, backoff_s=backoff_s)
            _write_marker(dest, {"repo": repo, "revision": revision, "patterns": patterns, "commit": commit,
                                 "complete": True, "files": sizes})
    except Exception as e:  # noqa: BLE001 - every failure becomes a DatasetError below
        if is_transient(e) and _recorded_complete(dest, repo, revision, patterns):
            print(f"warning: {where}: the Hub at {_endpoint()} keeps failing ({type(e).__name__}); using the "
                  f"complete download of commit {_read_marker(dest).get('commit', '?')[:12]} already in {dest}",
                  file=sys.stderr, flush=True)
            return _result(dest, subfolder, where, fixes)
        raise _download_error(e, hf_errors, where, revision, dest, fixes, retries) from None
    return _result(dest, subfolder, where, fixes)


def _use_local(repo: str, revision: str, dest: Path, subfolder: str | None, patterns: list[str], where: str,
               fixes: str) -> Path:
    """HF_HUB_OFFLINE: what is already on this machine, if it is whole."""
    from huggingface_hub import constants

    if _recorded_complete(dest, repo, revision, patterns):
        return _result(dest, subfolder, where, fixes)
    marker = _read_marker(dest)
    unfinished = bool(marker) or (dest / ".cache" / "huggingface").exists()
    if unfinished and not marker:  # e.g. `hf download --local-dir dest`: checked against its own file listing
        try:
            sizes = listed_files_present(repo, "dataset", revision, dest, patterns, dest)
            _write_marker(dest, {"repo": repo, "revision": revision, "patterns": patterns, "complete": True,
                                 "files": sizes})
            return _result(dest, subfolder, where, fixes)
        except IncompleteDownload:
            pass
    if not unfinished and find_images(dest):
        return _result(dest, subfolder, where, fixes)  # pre-downloaded by other means: used as is
    if _copy_from_hub_cache(repo, revision, dest, patterns):
        return _result(dest, subfolder, where, fixes)
    if unfinished:
        missing = _missing(dest, marker["files"]) if isinstance(marker.get("files"), dict) else []
        detail = f" ({len(missing)} file(s) missing, e.g. {missing[0]})" if missing else ""
        raise DatasetError(f"{where}: the download into {dest} did not finish{detail} and HF_HUB_OFFLINE is set, so "
                           f"it cannot be completed. Fix: unset HF_HUB_OFFLINE to resume it, or "
                           f"{_fetch_hint(repo, revision, dest)}; to use its files as they are, delete {dest / '.cache'}")
    reason = f"HF_HUB_OFFLINE is set, and the files are neither in {dest} nor in the Hub cache ({constants.HF_HUB_CACHE})"
    raise DatasetError(f"{where}: cannot download: {reason}. Fix: {fixes}")


def _download_error(e: BaseException, hf_errors, where: str, revision: str, dest: Path, fixes: str,
                    retries: int) -> Exception:
    """The user's message for a failed download: a DatasetError for what a retry cannot mend (not
    found, gated, a bad id, a full disk), HubUnavailable for failures still transient after the
    retries (exit 1: the pod is retried)."""
    message = _download_message(e, hf_errors, where, revision, dest, fixes, retries)
    return HubUnavailable(message) if is_transient(e) else DatasetError(message)


def _download_message(e: BaseException, hf_errors, where: str, revision: str, dest: Path, fixes: str,
                      retries: int) -> str:
    tried = f" (tried {retries + 1} times)" if is_transient(e) else ""
    if isinstance(e, hf_errors.GatedRepoError):
        return (f"{where} is gated: accept its terms on the Hub and provide a token "
                "(HF_TOKEN, see spec.output.hub.tokenEnv / kubernetes.secrets.hubToken)")
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return (f"{where}: repository not found on {_endpoint()} (or it is private and no valid "
                "token was given); check the repo id (a dataset repo, owner/name) and HF_TOKEN")
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return (f"{where}: revision {revision!r} does not exist in the repo; "
                "use a branch, tag or commit of the dataset repo")
    if isinstance(e, hf_errors.HFValidationError):
        return (f"{where}: invalid repo id or revision ({_short(e)})")
    if isinstance(e, IncompleteDownload):
        return (f"{where}: the download into {dest} stayed incomplete{tried}: {e}. Nothing partial is "
                f"used; rerun to resume it. Fix: check the network, or {fixes}")
    if isinstance(e, hf_errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return (f"{where}: the Hub at {_endpoint()} answered HTTP {status or '?'}{tried} ({_short(e)}). "
                f"Fix: retry later, or {fixes}")
    cause = e.__cause__ if isinstance(e, hf_errors.LocalEntryNotFoundError) and e.__cause__ else e
    if isinstance(e, OSError) and not isinstance(e, hf_errors.LocalEntryNotFoundError) and not is_transient(e):
        return (f"{where}: download failed ({type(e).__name__}: {_short(e)}). Fix: check free disk "
                f"space under {dest}, or {fixes}")
    return (f"{where}: cannot download: the Hub at {_endpoint()} could not be reached{tried} "
            f"({type(cause).__name__}: {_short(cause)}). Fix: {fixes}")


def _result(dest: Path, subfolder: str | None, where: str, fixes: str) -> Path:
    root = dest / subfolder.strip("/") if subfolder and subfolder.strip("/") else dest
    if not root.is_dir() or not find_images(root):
        raise DatasetError(f"{where}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root} after download; "
                           f"check the subfolder and that the repo holds image files. Fix: {fixes}")
    return dest


def _short(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, clipped."""
    return clip(" ".join(str(e).split()) or type(e).__name__, limit)
