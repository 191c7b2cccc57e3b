"""Download a BK-SDM model from the Hugging Face Hub into a diffusers models folder.

huggingface_hub moves the bytes (``hf_hub_download``: resume, retries, tokens, mirrors
through HF_ENDPOINT, offline mode, hf_xet; see ``hub``). What stays the pack's: which files a
variant needs (``plan``), the hidden staging folder beside the destination
(``.bksdm-partial-<name>``), the check of every file against the size and hash the hub lists
(``state.verify``), the one rename that puts a finished folder in place, and errors that say
what to do. A partial download is never offered as a model; a later call takes up the verified
files from the staging folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import asdict

from ..errors import DownloadError
from ..files.pipeline import PIPELINE_INDEX
from .hub import TAKES_TQDM_CLASS, HubRepo, Listing, endpoint_of, offline
from .plan import WEIGHT_CHOICES, RemoteFile, manual_steps, parse_repo_id, select_files
from .progress import Progress, ProgressCallback, Stopped
from .state import (
    MARKER,
    STAGING_PREFIX,
    FolderState,
    folder_state,
    local,
    present,
    read_marker,
    refuse_to_overwrite,
    size_of,
    verify,
    write_marker,
)

__all__ = ["MARKER", "STAGING_PREFIX", "WEIGHT_CHOICES", "download_model", "is_downloaded", "manual_steps",
           "parse_repo_id"]

log = logging.getLogger(__name__)

HUB_FOLDER = ".cache"  # what hf_hub_download keeps inside local_dir: metadata and partial files


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
    models_root = os.path.abspath(models_root)
    repo = HubRepo(repo_id, endpoint_of(endpoint), token, dest=os.path.join(models_root, folder_name),
                   staging=os.path.join(models_root, STAGING_PREFIX + folder_name), weights=weights)
    return _Request(repo, progress).run()


def is_downloaded(repo_id: str, models_root: str, weights: str = "fp16") -> bool:
    """Whether ``models_root`` already holds a complete folder for this request; no network."""
    repo_id, folder_name = parse_repo_id(repo_id)
    return folder_state(os.path.join(models_root, folder_name), repo_id, weights) is FolderState.COMPLETE


@contextlib.contextmanager
def _callers_error():
    """The caller's own error when its progress callback stopped the request."""
    try:
        yield
    except Stopped as stopped:
        raise stopped.error from None


class _Request:
    """One request: check what is on disk, fetch what is missing into staging, put it in place."""

    def __init__(self, repo: HubRepo, callback: ProgressCallback | None):
        self.repo, self.callback = repo, callback

    def run(self) -> str:
        repo = self.repo
        state = folder_state(repo.dest, repo.repo_id, repo.weights)
        if state is FolderState.COMPLETE:
            log.info("BK-SDM: %s is already in %s", repo.repo_id, repo.dest)
            return repo.dest
        refuse_to_overwrite(state, repo.dest, repo.repo_id)
        if offline():
            raise repo.manual_error("offline mode (HF_HUB_OFFLINE is set)")
        listing = repo.listing()
        wanted = self._wanted(listing, state)
        marker = self._prepare_staging(listing)
        staged = sum(listing.files[p].size if p in marker["files"] else self._partial_size(listing.files[p])
                     for p in wanted)
        self.progress = Progress(self.callback, sum(listing.files[p].size for p in wanted), staged)
        log.info("BK-SDM: downloading %s (%s weights, %d files, %.1f MB, %.1f MB of them already here) into %s",
                 repo.repo_id, repo.weights, len(wanted), self.progress.total / 1e6, staged / 1e6, repo.dest)
        with _callers_error():
            self.progress.report()
            for path in wanted:
                if path not in marker["files"]:
                    self._fetch(listing.files[path], listing.revision, marker)
            self.progress.report()
        self._finish(marker, wanted, state)
        log.info("BK-SDM: %s is ready in %s", repo.repo_id, repo.dest)
        return repo.dest

    def _wanted(self, listing: Listing, state: FolderState) -> list[str]:
        """The repo paths this request fetches, the pipeline index last: until it arrives, not even
        the hidden staging folder looks like a model."""
        wanted = select_files(listing.paths, self.repo.weights, self.repo.url)
        if self.repo.weights == "fp32" and any(".fp16." in p for p in wanted):
            log.warning("BK-SDM: %s lacks some full-precision weights; taking fp16 files for them", self.repo.repo_id)
        if state is FolderState.UNFINISHED:  # our earlier download of this repo, now asked for more files
            done = read_marker(self.repo.dest)
            wanted = [p for p in wanted
                      if not (present(self.repo.dest, done, p) and done["repo_files"][p] == asdict(listing.files[p]))]
        return sorted(wanted, key=lambda p: (p == PIPELINE_INDEX, p))

    def _prepare_staging(self, listing: Listing) -> dict:
        """The staging folder's marker; keeps what an earlier attempt fetched of these same files."""
        previous = read_marker(self.repo.staging)
        if previous is not None and previous["repo_id"] != self.repo.repo_id:  # another repo, same folder name
            shutil.rmtree(self.repo.staging)
            previous = None
        repo_files = {p: asdict(f) for p, f in listing.files.items()}
        kept = [p for p, entry in (previous or {"repo_files": {}})["repo_files"].items()
                if repo_files.get(p) == entry and present(self.repo.staging, previous, p)]
        os.makedirs(self.repo.staging, exist_ok=True)
        marker = {"repo_id": self.repo.repo_id, "revision": listing.revision, "repo_files": repo_files,
                  "files": sorted(kept)}
        write_marker(self.repo.staging, marker)
        return marker

    def _partial_size(self, remote: RemoteFile) -> int:
        """Bytes of this file that huggingface_hub kept from an earlier, cut transfer."""
        folder = os.path.join(self.repo.staging, HUB_FOLDER, "huggingface", "download", *remote.path.split("/")[:-1])
        etag = (remote.sha256 or remote.blob_id or "").lower()
        try:
            partials = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(f".{etag}.incomplete")]
        except OSError:
            partials = []
        return min(max((size_of(p) or 0 for p in partials), default=0), remote.size)

    def _fetch(self, remote: RemoteFile, revision: str, marker: dict) -> None:
        """One file into the staging folder, verified; a file that fails verification is fetched once more."""
        target = local(self.repo.staging, remote.path)
        for attempt in (1, 2):
            before = self.progress.done
            self.repo.fetch(remote.path, revision, again=attempt > 1, bar_class=self.progress.bar_class)
            if not TAKES_TQDM_CLASS:
                self.progress.advance(remote.size - (self.progress.done - before))
            problem = verify(target, remote)
            if problem is None:
                marker["files"] = sorted({*marker["files"], remote.path})
                write_marker(self.repo.staging, marker)
                return
            self.progress.done -= size_of(target) or 0
            os.remove(target)
            log.warning("BK-SDM: %s of %s is not what the hub lists (%s)%s", remote.path, self.repo.repo_id, problem,
                        "; fetching it again" if attempt == 1 else "")
        raise DownloadError(path=f"{self.repo.url}/blob/{revision}/{remote.path}",
                            expected=f"{remote.size} bytes"
                            + (f" with sha256 {remote.sha256}" if remote.sha256 else ""),
                            found=f"{problem}, twice",
                            fix="run the download again; if it keeps failing, something between "
                            "you and the hub (a proxy, the mirror in HF_ENDPOINT) is altering the file")

    def _finish(self, marker: dict, wanted: list[str], state: FolderState) -> None:
        """Put the verified files in place: rename the staging folder, or add them to our earlier folder."""
        if state is FolderState.ABSENT:
            self._rename_staging(marker)
        else:
            self._add_to_earlier(marker, wanted)

    def _rename_staging(self, marker: dict) -> None:
        shutil.rmtree(os.path.join(self.repo.staging, HUB_FOLDER), ignore_errors=True)
        keep = {*marker["files"], MARKER}
        for current, _, names in os.walk(self.repo.staging):
            for name in names:  # files of what this request does not take
                rel = os.path.relpath(os.path.join(current, name), self.repo.staging).replace(os.sep, "/")
                if rel not in keep:
                    os.remove(os.path.join(current, name))
        try:
            if os.path.isdir(self.repo.dest):
                os.rmdir(self.repo.dest)  # empty when checked; fails if something appeared since
            os.rename(self.repo.staging, self.repo.dest)
        except OSError as e:
            raise DownloadError(path=self.repo.dest, expected="no folder there, or an empty one",
                                found=f"one that changed during the download ({e})",
                                fix="move it away and run the download again: the fetched files are kept") from None

    def _add_to_earlier(self, marker: dict, wanted: list[str]) -> None:
        earlier = read_marker(self.repo.dest)
        for path in wanted:
            target = local(self.repo.dest, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(local(self.repo.staging, path), target)  # each file swaps in whole: the folder stays loadable
        files = [p for p in earlier["files"] if earlier["repo_files"].get(p) == marker["repo_files"].get(p)]
        write_marker(self.repo.dest, {**marker, "files": sorted({*files, *wanted})})
        shutil.rmtree(self.repo.staging, ignore_errors=True)
