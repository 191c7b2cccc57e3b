"""Download a BK-SDM model from the Hugging Face Hub into a diffusers models folder.

huggingface_hub moves the bytes (``hf_hub_download``: resume, retries, tokens, mirrors
through HF_ENDPOINT, offline mode, hf_xet). What stays the pack's: which files a variant
needs (``download_plan``), the hidden staging folder beside the destination
(``.bksdm-partial-<name>``), the check of every file against the size and hash the hub
lists (``download_state.verify``), the one rename that puts a finished folder in place,
and errors that say what to do. A partial download is never offered as a model; a later
call takes up the verified files from the staging folder.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import tqdm as hub_tqdm

from .download_plan import (
    WEIGHT_CHOICES,
    RemoteFile,
    manual_steps,
    may_take,
    parse_repo_id,
    select_files,
)
from .download_state import (
    MARKER,
    STAGING_PREFIX,
    local,
    local_state,
    present,
    read_marker,
    size_of,
    verify,
    write_marker,
)
from .errors import DownloadError
from .pipeline import PIPELINE_INDEX

__all__ = ["MARKER", "STAGING_PREFIX", "WEIGHT_CHOICES", "download_model", "is_downloaded", "manual_steps",
           "parse_repo_id"]

log = logging.getLogger(__name__)

LISTING_TIMEOUT_S = 30.0
HUB_FOLDER = ".cache"  # what hf_hub_download keeps inside local_dir: metadata and partial files
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables
# hf_hub_download takes a progress class from huggingface_hub 1.3 on; before, its own bar shows.
_TAKES_TQDM_CLASS = "tqdm_class" in inspect.signature(hf_hub_download).parameters

ProgressCallback = Callable[[int, int], None]


def download_model(repo_id: str, models_root: str, *, weights: str = "fp16", progress: ProgressCallback | None = None,
                   token: str | bool | None = None, endpoint: str | None = None) -> str:
    """Download a BK-SDM pipeline into ``models_root/<name>`` and return that folder's path.

    ``weights``: 'fp16' (half-precision U-Net and VAE files where the repo has them),
    'fp32' (full precision) or 'both'. ``progress(done_bytes, total_bytes)`` is called as
    bytes arrive; an exception it raises stops the download, and a later call resumes it.
    ``token`` and ``endpoint`` default to HF_TOKEN (or the saved login) and HF_ENDPOINT.
    """
    if weights not in WEIGHT_CHOICES:
        raise DownloadError(path=None, expected=f"weights one of {', '.join(WEIGHT_CHOICES)}", found=repr(weights),
                            fix="choose fp16 (smallest), fp32 or both")
    repo_id, folder_name = parse_repo_id(repo_id)
    return _Download(repo_id, folder_name, os.path.abspath(models_root), weights, progress, token, endpoint).run()


def is_downloaded(repo_id: str, models_root: str, weights: str = "fp16") -> bool:
    """Whether ``models_root`` already holds a complete folder for this request; no network."""
    repo_id, folder_name = parse_repo_id(repo_id)
    return local_state(os.path.join(models_root, folder_name), repo_id, weights) == "complete"


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when set after huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or value.upper() in _TRUE


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the HTTP library this huggingface_hub uses (requests, httpx or httpx2)."""
    errors: list[type[BaseException]] = [OSError]  # socket errors; requests' errors are OSErrors too
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)


class _Stopped(Exception):
    """The caller's progress callback raised (a cancelled prompt): its error, carried through huggingface_hub."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Progress:
    """Bytes of the whole request for the caller's callback, fed by huggingface_hub's bars."""

    def __init__(self, callback: ProgressCallback | None, total: int, done: int):
        self.callback, self.total, self.done = callback, total, done
        self.bar_class = self._bar_class()

    def advance(self, count: int) -> None:
        self.done = max(0, self.done + count)  # huggingface_hub counts back when a server ignores a range
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            try:
                self.callback(min(self.done, self.total), self.total)
            except Exception as e:
                raise _Stopped(e) from e

    def _bar_class(self) -> type:
        progress = self

        class RequestBar(hub_tqdm):
            """One file's bar as huggingface_hub drives it; counts into the request's total, shows nothing."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "disable": True})  # bytes resumed are counted already

            def update(self, n=1):
                progress.advance(n or 0)

        return RequestBar


class _Download:
    """One request: check what is on disk, fetch what is missing into staging, put it in place."""

    def __init__(self, repo_id: str, folder_name: str, models_root: str, weights: str,
                 progress: ProgressCallback | None, token: str | bool | None, endpoint: str | None):
        self.repo_id, self.weights, self.token, self.callback = repo_id, weights, token, progress
        # Read here, not at import as huggingface_hub does, so a changed HF_ENDPOINT counts.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.repo_url = f"{self.endpoint}/{repo_id}"
        self.dest = os.path.join(models_root, folder_name)
        self.staging = os.path.join(models_root, STAGING_PREFIX + folder_name)
        self.revision = "main"

    def run(self) -> str:
        state = local_state(self.dest, self.repo_id, self.weights)
        if state == "complete":
            log.info("BK-SDM: %s is already in %s", self.repo_id, self.dest)
            return self.dest
        self._refuse_others(state)
        if _offline():
            raise self._manual_error("offline mode (HF_HUB_OFFLINE is set)")
        paths, listing = self._list_repo()
        wanted = select_files(paths, self.weights, self.repo_url)
        if self.weights == "fp32" and any(".fp16." in p for p in wanted):
            log.warning("BK-SDM: %s lacks some full-precision weights; taking fp16 files for them", self.repo_id)
        if state == "ours":  # our earlier download of this repo, now asked for more files
            done = read_marker(self.dest)
            wanted = [p for p in wanted
                      if not (present(self.dest, done, p) and done["repo_files"][p] == asdict(listing[p]))]
        # The index last: until it arrives, not even the hidden staging folder looks like a model.
        wanted.sort(key=lambda p: (p == PIPELINE_INDEX, p))
        marker = self._prepare_staging(listing)
        staged = sum(listing[p].size if p in marker["files"] else self._partial_size(listing[p]) for p in wanted)
        self.progress = _Progress(self.callback, sum(listing[p].size for p in wanted), staged)
        log.info("BK-SDM: downloading %s (%s weights, %d files, %.1f MB, %.1f MB of them already here) into %s",
                 self.repo_id, self.weights, len(wanted), self.progress.total / 1e6, staged / 1e6, self.dest)
        self._report_or_stop()
        for path in wanted:
            if path not in marker["files"]:
                self._fetch(listing[path], marker)
        self._report_or_stop()
        self._finish(marker, wanted, state)
        log.info("BK-SDM: %s is ready in %s", self.repo_id, self.dest)
        return self.dest

    def _report_or_stop(self) -> None:
        try:
            self.progress.report()
        except _Stopped as stopped:
            raise stopped.error from None

    def _refuse_others(self, state: str) -> None:
        if state == "other-repo":
            other = read_marker(self.dest)["repo_id"]
            raise DownloadError(path=self.dest, expected=f"no folder there, or one downloaded from {self.repo_id}",
                                found=f"a folder downloaded from {other}",
                                fix="rename or delete that folder, or download into another models folder")
        if state == "foreign":
            raise DownloadError(path=self.dest, expected="no folder there, or a complete model folder",
                                found="a folder this pack did not download, without a loadable model in it",
                                fix="move it away or delete it, then download again (the pack never overwrites it)")

    def _manual_error(self, found: str) -> DownloadError:
        return DownloadError(path=self.dest, expected=f"a connection to {self.endpoint} to download {self.repo_id}",
                             found=found,
                             fix=manual_steps(self.repo_id, self.dest, self.weights, self.endpoint))

    def _hub_error(self, error: Exception, what: str) -> DownloadError:
        """The pack's error for what huggingface_hub raised while listing or fetching ``what``."""
        if isinstance(error, GatedRepoError) or (isinstance(error, HfHubHTTPError) and getattr(
                getattr(error, "response", None), "status_code", None) in (401, 403)):
            return DownloadError(path=self.repo_url, expected=f"access to {what}",
                                 found=f"a gated or private repo ({_first_line(error)})",
                                 fix=f"accept the model's terms at {self.repo_url} while logged in, then set HF_TOKEN "
                                 "to a token of that account")
        if isinstance(error, RepositoryNotFoundError):
            return DownloadError(path=self.repo_url, expected="a model repository",
                                 found="none (or a private one this token cannot see)",
                                 fix="check the repo id; for a private or gated repo set HF_TOKEN")
        if isinstance(error, EntryNotFoundError):
            return DownloadError(path=self.repo_url, expected=f"{what}, as the repo's listing names it",
                                 found=_first_line(error),
                                 fix="the repo may have changed during the download: run it again")
        if isinstance(error, OfflineModeIsEnabled):
            return self._manual_error("offline mode (HF_HUB_OFFLINE is set)")
        if isinstance(error, HfHubHTTPError):
            return DownloadError(path=self.repo_url, expected=what, found=_first_line(error),
                                 fix="try again later, or check HF_ENDPOINT")
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            return DownloadError(path=self.staging, expected="room to write the download",
                                 found=f"{type(error).__name__}: {error}",
                                 fix="free disk space (or fix the folder's permissions) and run the download again: "
                                 "it keeps the files already verified")
        # Anything else is the network: huggingface_hub has retried it already.
        return DownloadError(path=self.repo_url, expected=what,
                             found=f"no connection ({type(error).__name__}: {_first_line(error)})",
                             fix="check the connection and run the download again: it keeps the files already verified")

    def _list_repo(self) -> tuple[list[str], dict[str, RemoteFile]]:
        """Every path of the repo, and the files the pack may take with their sizes and hashes."""
        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.repo_id, files_metadata=True, timeout=LISTING_TIMEOUT_S)
        except (HfHubHTTPError, OfflineModeIsEnabled) as e:
            raise self._hub_error(e, "the repo's file listing") from None
        except _transport_errors() as e:
            raise self._manual_error(f"no connection ({type(e).__name__}: {e})") from None
        self.revision = info.sha or "main"  # every file from the same commit, even if the repo moves on
        paths, listing = [], {}
        for sibling in info.siblings or []:
            paths.append(sibling.rfilename)
            if not may_take(sibling.rfilename):
                continue
            lfs = sibling.lfs
            size = lfs["size"] if lfs else sibling.size
            if size is None:
                raise DownloadError(path=self.repo_url, expected="file sizes in the hub's listing",
                                    found=f"none for {sibling.rfilename}",
                                    fix="use the official hub, or a mirror (HF_ENDPOINT) that lists file metadata")
            listing[sibling.rfilename] = RemoteFile(sibling.rfilename, int(size), lfs["sha256"] if lfs else None,
                                                    None if lfs else sibling.blob_id)
        return paths, listing

    def _prepare_staging(self, listing: dict[str, RemoteFile]) -> dict:
        """The staging folder's marker; keeps what an earlier attempt fetched of these same files."""
        previous = read_marker(self.staging)
        if previous is not None and previous["repo_id"] != self.repo_id:  # another repo, same folder name
            shutil.rmtree(self.staging)
            previous = None
        repo_files = {p: asdict(f) for p, f in listing.items()}
        kept = [p for p, entry in (previous or {"repo_files": {}})["repo_files"].items()
                if repo_files.get(p) == entry and present(self.staging, previous, p)]
        os.makedirs(self.staging, exist_ok=True)
        marker = {"repo_id": self.repo_id, "revision": self.revision, "repo_files": repo_files, "files": sorted(kept)}
        write_marker(self.staging, marker)
        return marker

    def _partial_size(self, remote: RemoteFile) -> int:
        """Bytes of this file that huggingface_hub kept from an earlier, cut transfer."""
        sizes = [size_of(p) or 0 for p in self._partials(remote)]
        return min(max(sizes, default=0), remote.size)

    def _partials(self, remote: RemoteFile) -> list[str]:
        folder = os.path.join(self.staging, HUB_FOLDER, "huggingface", "download", *remote.path.split("/")[:-1])
        etag = (remote.sha256 or remote.blob_id or "").lower()
        with contextlib.suppress(OSError):
            return [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(f".{etag}.incomplete")]
        return []

    def _fetch(self, remote: RemoteFile, marker: dict) -> None:
        """One file into the staging folder through huggingface_hub, verified; a file that fails
        verification is fetched once more."""
        target = local(self.staging, remote.path)
        options = {"tqdm_class": self.progress.bar_class} if _TAKES_TQDM_CLASS else {}
        for attempt in (1, 2):
            before = self.progress.done
            try:
                hf_hub_download(self.repo_id, remote.path, revision=self.revision, local_dir=self.staging,
                                endpoint=self.endpoint, token=self.token, force_download=attempt > 1, **options)
            except _Stopped as stopped:
                raise stopped.error from None
            except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, *_transport_errors()) as e:
                raise self._hub_error(e, remote.path) from None
            if not _TAKES_TQDM_CLASS:
                self.progress.advance(remote.size - (self.progress.done - before))
            problem = verify(target, remote)
            if problem is None:
                marker["files"] = sorted({*marker["files"], remote.path})
                write_marker(self.staging, marker)
                return
            self.progress.done -= size_of(target) or 0
            os.remove(target)
            log.warning("BK-SDM: %s of %s is not what the hub lists (%s)%s", remote.path, self.repo_id, problem,
                        "; fetching it again" if attempt == 1 else "")
        raise DownloadError(path=f"{self.repo_url}/blob/{self.revision}/{remote.path}",
                            expected=f"{remote.size} bytes"
                            + (f" with sha256 {remote.sha256}" if remote.sha256 else ""),
                            found=f"{problem}, twice",
                            fix="run the download again; if it keeps failing, something between "
                            "you and the hub (a proxy, the mirror in HF_ENDPOINT) is altering the file")

    def _finish(self, marker: dict, wanted: list[str], state: str) -> None:
        """Put the verified files in place: rename the staging folder, or add them to our earlier folder."""
        if state == "absent":
            shutil.rmtree(os.path.join(self.staging, HUB_FOLDER), ignore_errors=True)
            keep = {*marker["files"], MARKER}
            for current, _, names in os.walk(self.staging):
                for name in names:  # files of what this request does not take
                    rel = os.path.relpath(os.path.join(current, name), self.staging).replace(os.sep, "/")
                    if rel not in keep:
                        os.remove(os.path.join(current, name))
            try:
                if os.path.isdir(self.dest):
                    os.rmdir(self.dest)  # empty when checked; fails if something appeared since
                os.rename(self.staging, self.dest)
            except OSError as e:
                raise DownloadError(path=self.dest, expected="no folder there, or an empty one",
                                    found=f"one that changed during the download ({e})",
                                    fix="move it away and run the download again: the fetched files are kept") from None
            return
        earlier = read_marker(self.dest)
        for path in wanted:
            target = local(self.dest, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(local(self.staging, path), target)  # each file swaps in whole: the folder stays loadable
        files = [p for p in earlier["files"] if earlier["repo_files"].get(p) == marker["repo_files"].get(p)]
        write_marker(self.dest, {**marker, "files": sorted({*files, *wanted})})
        shutil.rmtree(self.staging, ignore_errors=True)
