"""Download a BK-SDM model from the Hugging Face Hub into a diffusers models folder.

Only what the loaders read is fetched: the pipeline index, the unet / vae / text_encoder
configs, the scheduler config and safetensors weights, chosen from the repo's own file
listing. Files go to a hidden staging folder beside the destination
(``.bksdm-partial-<name>``); each must match the size and hash the hub lists, and only
then is the folder renamed into place, so a partial download is never offered as a
model. Transfers resume with HTTP Range requests: within a call after a network error,
and in a later call from the kept staging folder.

A finished folder carries ``.bksdm-download.json`` (repo, revision, verified files): a
repeated request is answered from disk without the network, a later request for more
weights adds only the missing files, and a folder the user made is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass

from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.utils import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    build_hf_headers,
    get_session,
)

from .errors import BKSDMError, DownloadError, summarize
from .pipeline import HIDDEN_PREFIX, PIPELINE_INDEX, WEIGHT_STEMS, open_model_folder, weights_file
from .variants import VARIANTS, find_variant

log = logging.getLogger(__name__)

WEIGHT_CHOICES = ("fp16", "fp32", "both")
STAGING_PREFIX = HIDDEN_PREFIX + "bksdm-partial-"
MARKER = HIDDEN_PREFIX + "bksdm-download.json"
PART_SUFFIX = ".part"
COMPONENTS = ("unet", "vae", "text_encoder")
REQUIRED_CONFIGS = (PIPELINE_INDEX, "unet/config.json", "vae/config.json", "text_encoder/config.json")
OPTIONAL_CONFIGS = ("scheduler/scheduler_config.json",)
# What "fp16" takes first. The text encoder keeps its full file: it is small next to the
# U-Net, and ComfyUI may run it in fp32 (--fp32-text-enc), which only the full file serves exactly.
HALF_FIRST = {"unet": True, "vae": True, "text_encoder": False}

TIMEOUT_S = 30.0  # per connect / read: huggingface_hub's shared client sets none
TRANSFER_ATTEMPTS = 3  # network failures in a row, without a byte of progress, before giving up
RETRY_DELAYS_S = (1.0, 4.0)  # waits before the 2nd and the later attempts
RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)
PROGRESS_STEP = 1 << 20  # report every MiB or every 0.1 %, whichever is larger
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables

# "owner/name" as the Hub allows it: letters, digits, '-', '_', '.', no leading or trailing
# punctuation (so never '.', '..' or a hidden name), and no '..' or '--' inside.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?P<owner>{_PART})/(?P<name>{_PART})")

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub lists it: what the downloaded copy must match."""

    path: str
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git object id (sha1) of files kept in git


def parse_repo_id(name: str) -> tuple[str, str]:
    """(repo id, folder name) for a registry name ('bk-sdm-small', 'nota-ai/bk-sdm-small') or
    a Hub repo id 'owner/name'; refuses anything that could point outside the models folder."""
    variant = find_variant(name) if isinstance(name, str) else None
    if variant is not None:
        return variant.repo_id, variant.folder_name
    match = _REPO_ID.fullmatch(name) if isinstance(name, str) else None
    if match is None or ".." in name or "--" in name:
        raise DownloadError(None, "a BK-SDM name such as 'bk-sdm-small', or a Hugging Face repo id 'owner/name' "
                            "(letters, digits, '-', '_' and '.')", repr(name),
                            f"use a registry name ({summarize(v.folder_name for v in VARIANTS.values())}) "
                            "or the id shown on the model's Hugging Face page")
    return name, match.group("name")


def download_model(repo_id: str, models_root: str, *, weights: str = "fp16", progress: ProgressCallback | None = None,
                   token: str | bool | None = None, endpoint: str | None = None) -> str:
    """Download a BK-SDM pipeline into ``models_root/<name>`` and return that folder's path.

    ``weights``: 'fp16' (half-precision U-Net and VAE files where the repo has them),
    'fp32' (full precision) or 'both'. ``progress(done_bytes, total_bytes)`` is called as
    bytes arrive; an exception it raises stops the download, and a later call resumes it.
    ``token`` and ``endpoint`` default to HF_TOKEN (or the saved login) and HF_ENDPOINT.
    """
    if weights not in WEIGHT_CHOICES:
        raise DownloadError(None, f"weights one of {', '.join(WEIGHT_CHOICES)}", repr(weights),
                            "choose fp16 (smallest), fp32 or both")
    repo_id, folder_name = parse_repo_id(repo_id)
    return _Download(repo_id, folder_name, os.path.abspath(models_root), weights, progress, token, endpoint).run()


def is_downloaded(repo_id: str, models_root: str, weights: str = "fp16") -> bool:
    """Whether ``models_root`` already holds a complete folder for this request; no network."""
    repo_id, folder_name = parse_repo_id(repo_id)
    return _local_state(os.path.join(models_root, folder_name), repo_id, weights) == "complete"


def select_files(available: Collection[str], weights: str, where: str = "the repo") -> list[str]:
    """The repo paths to fetch for ``weights``, chosen from the paths the repo has."""
    missing = [p for p in REQUIRED_CONFIGS if p not in available]
    if missing:
        raise DownloadError(where, "a diffusers Stable Diffusion pipeline (model_index.json; unet/, vae/ and "
                            "text_encoder/ with config.json and safetensors weights)", f"no {summarize(missing)}",
                            "check the repo id: the pack downloads SD 1.x / 2.x pipelines in the diffusers layout")
    chosen = [*REQUIRED_CONFIGS, *(p for p in OPTIONAL_CONFIGS if p in available)]
    for component in COMPONENTS:
        full, half = _weight_names(component)
        present = [p for p in (full, half) if p in available]
        if not present:
            others = sorted(p.split("/", 1)[1] for p in available
                            if p.startswith(component + "/") and not p.endswith("/config.json"))
            raise DownloadError(where, f"{full} or {half}",
                                f"{summarize(others) if others else 'no weights'} in {component}/",
                                "the pack downloads safetensors only (a .bin pickle can run code when loaded): "
                                "use a repo that publishes safetensors, or fetch the files by hand")
        if weights == "both":
            chosen += present
        elif weights == "fp32" or not HALF_FIRST[component]:
            chosen.append(present[0])
        else:
            chosen.append(half if half in present else full)
    return sorted(chosen)


def manual_steps(repo_id: str, folder: str, weights: str, endpoint: str = constants.ENDPOINT) -> str:
    """What to do by hand instead: which files to fetch, and the folder tree to put them in."""
    lines = [f"{folder}{os.sep}", f"  {PIPELINE_INDEX}", "  scheduler/", "    scheduler_config.json"]
    for component in COMPONENTS:
        full, half = (path.split("/", 1)[1] for path in _weight_names(component))
        if weights == "both":
            choice = f"{full} and {half}"
        elif weights == "fp32" or not HALF_FIRST[component]:
            choice = f"{full} (or {half} if the repo has only that)"
        else:
            choice = f"{half} (or {full} if the repo has no fp16 file)"
        lines += [f"  {component}/", "    config.json", f"    {choice}"]
    tree = "\n".join(" " * 14 + line for line in lines)  # aligned under the error's "fix:" text
    return (f"download these files from {endpoint.rstrip('/')}/{repo_id}/tree/main (safetensors only, no .bin) "
            f"and put them in this tree, then refresh ComfyUI's model list:\n{tree}")


def verify(path: str, remote: RemoteFile) -> str | None:
    """None when ``path`` holds the file the hub lists, else what is wrong with it."""
    size = _size(path)
    if size != remote.size:
        return f"{size} bytes where the hub lists {remote.size}"
    if remote.sha256:
        digest = _digest(path, hashlib.sha256())
        if digest != remote.sha256.lower():
            return f"sha256 {digest} where the hub lists {remote.sha256}"
    elif remote.blob_id:  # a git blob id is the sha1 of "blob <size>\0" + the content
        digest = _digest(path, hashlib.sha1(usedforsecurity=False), b"blob %d\0" % size)
        if digest != remote.blob_id.lower():
            return f"git blob id {digest} where the hub lists {remote.blob_id}"
    return None


def _weight_names(component: str) -> tuple[str, str]:
    stem = WEIGHT_STEMS[component][0]
    return f"{component}/{stem}.safetensors", f"{component}/{stem}.fp16.safetensors"


def _may_take(path: str) -> bool:
    return path in REQUIRED_CONFIGS or path in OPTIONAL_CONFIGS or any(path in _weight_names(c) for c in COMPONENTS)


def _local_state(dest: str, repo_id: str, weights: str) -> str:
    """'absent', 'complete', 'ours' (our download of this repo, lacking files), 'other-repo' or 'foreign'."""
    if not os.path.lexists(dest) or (os.path.isdir(dest) and not os.listdir(dest)):
        return "absent"
    marker = _read_marker(dest)
    if marker is None:
        return "complete" if _loadable(dest, weights) else "foreign"
    if marker["repo_id"] != repo_id:
        return "other-repo"
    try:
        wanted = select_files(marker["repo_files"], weights, dest)
    except DownloadError:
        return "ours"
    return "complete" if all(_present(dest, marker, p) for p in wanted) else "ours"


def _loadable(dest: str, weights: str) -> bool:
    """A folder the loaders accept: the pipeline index, the component configs and weights."""
    try:
        folder = open_model_folder(dest)
        if not folder.is_pipeline or not all(os.path.isfile(os.path.join(dest, p)) for p in REQUIRED_CONFIGS):
            return False
        for component in COMPONENTS:
            weights_file(folder, component, prefer_half=weights != "fp32")
    except BKSDMError:
        return False
    return True


def _present(folder: str, marker: dict, path: str) -> bool:
    """Recorded as verified in ``folder``, and still of the listed size on disk."""
    entry = marker["repo_files"].get(path)
    return path in marker["files"] and entry is not None and _size(_local(folder, path)) == entry["size"]


def _read_marker(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    # Only names the pack itself takes: a damaged or planted marker must not name paths elsewhere.
    valid = (isinstance(marker, dict) and isinstance(marker.get("repo_id"), str)
             and isinstance(marker.get("files"), list) and isinstance(marker.get("repo_files"), dict)
             and all(_may_take(p) and isinstance(e, dict) and isinstance(e.get("size"), int)
                     for p, e in marker["repo_files"].items()))
    return marker if valid else None


def _write_marker(folder: str, marker: dict) -> None:
    path = os.path.join(folder, MARKER)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _local(folder: str, path: str) -> str:
    return os.path.join(folder, *path.split("/"))


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _digest(path: str, hasher, prefix: bytes = b"") -> str:
    hasher.update(prefix)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when set after huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or value.upper() in _TRUE


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of the HTTP library this huggingface_hub uses (requests, httpx or httpx2)."""
    errors: list[type[BaseException]] = [OSError]  # socket errors; requests' errors are OSErrors too
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)


@contextlib.contextmanager
def _get_stream(url: str, headers: dict[str, str]) -> Iterator[tuple[object, Iterator[bytes]]]:
    """GET ``url`` with huggingface_hub's HTTP client (its proxies, redirects, offline switch), streamed."""
    session = get_session()
    if callable(getattr(session, "stream", None)):  # an httpx-style client: huggingface_hub >= 1.0
        with session.stream("GET", url, headers=headers, timeout=TIMEOUT_S) as response:
            yield response, response.iter_bytes()
    else:  # a requests.Session: huggingface_hub < 1.0
        response = session.get(url, headers=headers, timeout=TIMEOUT_S, stream=True)
        with contextlib.closing(response):
            # urllib3 drops a partly read chunk when the connection breaks: small chunks lose little.
            yield response, response.iter_content(1 << 13)


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Retry(Exception):
    """A failed transfer attempt worth another one (a 5xx or 429 answer, a range the server refused)."""


class _Progress:
    """Byte counts for the caller's callback, throttled so that a UI is not flooded."""

    def __init__(self, callback: ProgressCallback | None, total: int, done: int):
        self.callback = callback
        self.total = total
        self.done = done
        self.received = 0  # bytes that arrived in this call: never goes back, unlike ``done``
        self.step = max(PROGRESS_STEP, total // 1000)
        self.reported = -self.step

    def advance(self, count: int) -> None:
        self.done += count
        self.received += count
        if self.done - self.reported >= self.step:
            self.report()

    def rewind(self, count: int) -> None:
        self.done = max(0, self.done - count)

    def report(self) -> None:
        self.reported = self.done
        if self.callback is not None:
            self.callback(min(self.done, self.total), self.total)


class _Download:
    """One request: check what is on disk, fetch what is missing into staging, put it in place."""

    def __init__(self, repo_id: str, folder_name: str, models_root: str, weights: str,
                 progress: ProgressCallback | None, token: str | bool | None, endpoint: str | None):
        self.repo_id = repo_id
        self.weights = weights
        self.token = token
        # Read here, not at import as huggingface_hub does, so a changed HF_ENDPOINT counts.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.repo_url = f"{self.endpoint}/{repo_id}"
        self.dest = os.path.join(models_root, folder_name)
        self.staging = os.path.join(models_root, STAGING_PREFIX + folder_name)
        self.revision = "main"
        self.callback = progress
        self.transport_errors = _transport_errors()

    def run(self) -> str:
        state = _local_state(self.dest, self.repo_id, self.weights)
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
            done = _read_marker(self.dest)
            wanted = [p for p in wanted
                      if not (_present(self.dest, done, p) and done["repo_files"][p] == asdict(listing[p]))]
        # The index last: until it arrives, not even the hidden staging folder looks like a model.
        wanted.sort(key=lambda p: (p == PIPELINE_INDEX, p))
        marker = self._prepare_staging(listing)
        staged = sum(listing[p].size if p in marker["files"] else min(_size(self._part(p)) or 0, listing[p].size)
                     for p in wanted)
        self.progress = _Progress(self.callback, sum(listing[p].size for p in wanted), staged)
        log.info("BK-SDM: downloading %s (%s weights, %d files, %.1f MB, %.1f MB of them already here) into %s",
                 self.repo_id, self.weights, len(wanted), self.progress.total / 1e6, staged / 1e6, self.dest)
        self.progress.report()
        for path in wanted:
            if path not in marker["files"]:
                self._fetch(listing[path], marker)
        self.progress.report()
        self._finish(marker, wanted, state)
        log.info("BK-SDM: %s is ready in %s", self.repo_id, self.dest)
        return self.dest

    def _refuse_others(self, state: str) -> None:
        if state == "other-repo":
            other = _read_marker(self.dest)["repo_id"]
            raise DownloadError(self.dest, f"no folder there, or one downloaded from {self.repo_id}",
                                f"a folder downloaded from {other}",
                                "rename or delete that folder, or download into another models folder")
        if state == "foreign":
            raise DownloadError(self.dest, "no folder there, or a complete model folder",
                                "a folder this pack did not download, without a loadable model in it",
                                "move it away or delete it, then download again (the pack never overwrites it)")

    def _manual_error(self, found: str) -> DownloadError:
        return DownloadError(self.dest, f"a connection to {self.endpoint} to download {self.repo_id}", found,
                             manual_steps(self.repo_id, self.dest, self.weights, self.endpoint))

    def _list_repo(self) -> tuple[list[str], dict[str, RemoteFile]]:
        """Every path of the repo, and the files the pack may take with their sizes and hashes."""
        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.repo_id, files_metadata=True, timeout=TIMEOUT_S)
        except GatedRepoError as e:
            raise DownloadError(self.repo_url, "access to the model's files", f"a gated repo ({_first_line(e)})",
                                f"accept the model's terms at {self.repo_url} while logged in, then set HF_TOKEN "
                                "to a token of that account") from None
        except RepositoryNotFoundError:
            raise DownloadError(self.repo_url, "a model repository", "none (or a private one this token cannot see)",
                                "check the repo id; for a private or gated repo set HF_TOKEN") from None
        except HfHubHTTPError as e:
            raise DownloadError(self.repo_url, "the repo's file listing", _first_line(e),
                                "try again later, or check HF_ENDPOINT") from None
        except OfflineModeIsEnabled:
            raise self._manual_error("offline mode (HF_HUB_OFFLINE is set)") from None
        except self.transport_errors as e:
            raise self._manual_error(f"no connection ({type(e).__name__}: {e})") from None
        self.revision = info.sha or "main"  # every file from the same commit, even if the repo moves on
        paths, listing = [], {}
        for sibling in info.siblings or []:
            paths.append(sibling.rfilename)
            if not _may_take(sibling.rfilename):
                continue
            lfs = sibling.lfs
            size = lfs["size"] if lfs else sibling.size
            if size is None:
                raise DownloadError(self.repo_url, "file sizes in the hub's listing", f"none for {sibling.rfilename}",
                                    "use the official hub, or a mirror (HF_ENDPOINT) that lists file metadata")
            listing[sibling.rfilename] = RemoteFile(sibling.rfilename, int(size), lfs["sha256"] if lfs else None,
                                                    None if lfs else sibling.blob_id)
        return paths, listing

    def _prepare_staging(self, listing: dict[str, RemoteFile]) -> dict:
        """The staging folder's marker; keeps what an earlier attempt fetched of these same files."""
        previous = _read_marker(self.staging)
        if previous is not None and previous["repo_id"] != self.repo_id:  # another repo, same folder name
            shutil.rmtree(self.staging)
            previous = None
        repo_files = {p: asdict(f) for p, f in listing.items()}
        kept = []
        for path, entry in (previous or {"repo_files": {}})["repo_files"].items():
            if repo_files.get(path) == entry:
                if _present(self.staging, previous, path):
                    kept.append(path)
                continue
            for stale in (_local(self.staging, path), self._part(path)):  # the repo changed since that attempt
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)
        os.makedirs(self.staging, exist_ok=True)
        marker = {"repo_id": self.repo_id, "revision": self.revision, "repo_files": repo_files, "files": sorted(kept)}
        _write_marker(self.staging, marker)
        return marker

    def _part(self, path: str) -> str:
        return _local(self.staging, path) + PART_SUFFIX

    def _fetch(self, remote: RemoteFile, marker: dict) -> None:
        """One file into the staging folder, verified; a file that fails verification is fetched once more."""
        part = self._part(remote.path)
        os.makedirs(os.path.dirname(part), exist_ok=True)
        for attempt in (1, 2):
            self._transfer(remote, part)
            problem = verify(part, remote)
            if problem is None:
                with open(part, "rb+") as f:
                    os.fsync(f.fileno())  # on disk before it counts as verified
                os.replace(part, _local(self.staging, remote.path))
                marker["files"] = sorted({*marker["files"], remote.path})
                _write_marker(self.staging, marker)
                return
            self.progress.rewind(_size(part) or 0)
            os.remove(part)
            log.warning("BK-SDM: %s of %s is not what the hub lists (%s)%s", remote.path, self.repo_id, problem,
                        "; fetching it again" if attempt == 1 else "")
        raise DownloadError(f"{self.repo_url}/blob/{self.revision}/{remote.path}",
                            f"{remote.size} bytes" + (f" with sha256 {remote.sha256}" if remote.sha256 else ""),
                            f"{problem}, twice", "run the download again; if it keeps failing, something between "
                            "you and the hub (a proxy, the mirror in HF_ENDPOINT) is altering the file")

    def _transfer(self, remote: RemoteFile, part: str) -> None:
        """Bring ``part`` to the listed size, resuming from what it holds; retries network failures."""
        url = hf_hub_url(self.repo_id, remote.path, revision=self.revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        headers["Accept-Encoding"] = "identity"  # ranges and sizes must refer to the file's own bytes
        failures = 0
        while True:
            have = _size(part) or 0
            if have > remote.size:  # cannot be a prefix of this file
                os.remove(part)
                self.progress.rewind(have)
                have = 0
            if have == remote.size:
                return
            received = self.progress.received
            try:
                self._receive(url, headers, part, have, remote)
                reason = "the connection closed before the end of the file"
            except (_Retry, *self.transport_errors) as e:
                reason = f"{type(e).__name__}: {e}"
            if (_size(part) or 0) >= remote.size:
                return
            failures = 0 if self.progress.received > received else failures + 1
            if failures >= TRANSFER_ATTEMPTS:
                raise DownloadError(url, f"{remote.size} bytes of {remote.path}",
                                    f"{reason} ({failures} attempts in a row)",
                                    "check the connection and run the download again: it resumes where it stopped")
            if failures:
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1]
                log.warning("BK-SDM: %s: %s; retrying in %.0f s", remote.path, reason, delay)
                time.sleep(delay)
            else:
                log.info("BK-SDM: %s: %s; resuming at byte %d", remote.path, reason, _size(part) or 0)

    def _receive(self, url: str, headers: dict[str, str], part: str, have: int, remote: RemoteFile) -> None:
        """One GET: appended to ``part`` when the server honours the range, else written from the start."""
        if have:
            headers = {**headers, "Range": f"bytes={have}-"}
        with _get_stream(url, headers) as (response, chunks):
            status = response.status_code
            if status == 206 and have and _range_start(response) == have:
                mode = "ab"
            elif status == 200:
                self.progress.rewind(have)  # the server ignored the range: the whole file comes again
                mode, have = "wb", 0
            elif status in RETRYABLE_STATUS:
                raise _Retry(f"HTTP {status}")
            elif status in (206, 416):  # the server's idea of this file differs from what we hold
                self.progress.rewind(have)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(part)
                raise _Retry(f"HTTP {status} for bytes {have}-")
            else:
                raise self._http_error(url, status, remote)
            try:
                f = open(part, mode)  # noqa: SIM115  (its errors are the disk's, not the network's)
            except OSError as e:
                raise _disk_error(part, e) from None
            with f:
                for chunk in chunks:  # network failures propagate to _transfer, which resumes
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise _disk_error(part, e) from None
                    have += len(chunk)
                    self.progress.advance(len(chunk))
                    if have > remote.size:
                        break  # more than listed: verification names the problem

    def _http_error(self, url: str, status: int, remote: RemoteFile) -> DownloadError:
        if status in (401, 403):
            return DownloadError(url, f"access to {remote.path}", f"HTTP {status} (a gated or private repo)",
                                 f"accept the model's terms at {self.repo_url} while logged in, then set HF_TOKEN")
        return DownloadError(url, f"{remote.path}, as the repo's listing names it", f"HTTP {status}",
                             "the repo may have changed during the download: run it again")

    def _finish(self, marker: dict, wanted: list[str], state: str) -> None:
        """Put the verified files in place: rename the staging folder, or add them to our earlier folder."""
        if state == "absent":
            keep = {*marker["files"], MARKER}
            for current, _, names in os.walk(self.staging):
                for name in names:  # partial files of what this request does not take
                    rel = os.path.relpath(os.path.join(current, name), self.staging).replace(os.sep, "/")
                    if rel not in keep:
                        os.remove(os.path.join(current, name))
            try:
                if os.path.isdir(self.dest):
                    os.rmdir(self.dest)  # empty when checked; fails if something appeared since
                os.rename(self.staging, self.dest)
            except OSError as e:
                raise DownloadError(self.dest, "no folder there, or an empty one",
                                    f"one that changed during the download ({e})",
                                    "move it away and run the download again: the fetched files are kept") from None
            return
        earlier = _read_marker(self.dest)
        for path in wanted:
            target = _local(self.dest, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(_local(self.staging, path), target)  # each file swaps in whole: the folder stays loadable
        files = [p for p in earlier["files"] if earlier["repo_files"].get(p) == marker["repo_files"].get(p)]
        _write_marker(self.dest, {**marker, "files": sorted({*files, *wanted})})
        shutil.rmtree(self.staging, ignore_errors=True)


def _disk_error(path: str, error: OSError) -> DownloadError:
    return DownloadError(path, "room to write the download", f"{type(error).__name__}: {error}",
                         "free disk space (or fix the folder's permissions) and run the download again: "
                         "it resumes where it stopped")
