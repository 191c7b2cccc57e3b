"""The hub as a request reaches it: huggingface_hub lists the repo and fetches a file, and
what it raises becomes the pack's error, each with what to do."""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import os
from dataclasses import dataclass

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

from ..errors import DownloadError
from .plan import RemoteFile, manual_steps, may_take

LISTING_TIMEOUT_S = 30.0
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of boolean environment variables
# hf_hub_download takes a progress class from huggingface_hub 1.3 on; before, its own bar shows.
TAKES_TQDM_CLASS = "tqdm_class" in inspect.signature(hf_hub_download).parameters


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when set after huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or value.upper() in _TRUE


def endpoint_of(endpoint: str | None) -> str:
    """The endpoint to use: the caller's, else HF_ENDPOINT read now (not at import, as
    huggingface_hub does, so that a changed HF_ENDPOINT counts), else huggingface_hub's."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the HTTP library this huggingface_hub uses (requests, httpx or httpx2)."""
    errors: list[type[BaseException]] = [OSError]  # socket errors; requests' errors are OSErrors too
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class Listing:
    """The repo at one commit: every path in it, and the files the pack may take as the hub lists them."""

    revision: str
    paths: list[str]
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class HubRepo:
    """One repo on one endpoint, on behalf of a request for ``weights`` into ``dest``."""

    repo_id: str
    endpoint: str
    token: str | bool | None
    dest: str
    staging: str
    weights: str

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    def manual_error(self, found: str) -> DownloadError:
        """No way to the hub: the files to fetch by hand and where they go."""
        return DownloadError(path=self.dest, expected=f"a connection to {self.endpoint} to download {self.repo_id}",
                             found=found, fix=manual_steps(self.repo_id, self.dest, self.weights, self.endpoint))

    def listing(self) -> Listing:
        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(self.repo_id, files_metadata=True, timeout=LISTING_TIMEOUT_S)
        except (HfHubHTTPError, OfflineModeIsEnabled) as e:
            raise self._error(e, "the repo's file listing") from None
        except _transport_errors() as e:
            raise self.manual_error(f"no connection ({type(e).__name__}: {e})") from None
        paths, files = [], {}
        for sibling in info.siblings or []:
            paths.append(sibling.rfilename)
            if not may_take(sibling.rfilename):
                continue
            lfs = sibling.lfs
            size = lfs["size"] if lfs else sibling.size
            if size is None:
                raise DownloadError(path=self.url, expected="file sizes in the hub's listing",
                                    found=f"none for {sibling.rfilename}",
                                    fix="use the official hub, or a mirror (HF_ENDPOINT) that lists file metadata")
            files[sibling.rfilename] = RemoteFile(sibling.rfilename, int(size), lfs["sha256"] if lfs else None,
                                                  None if lfs else sibling.blob_id)
        # Every file from the same commit, even if the repo moves on during the download.
        return Listing(info.sha or "main", paths, files)

    def fetch(self, path: str, revision: str, *, again: bool, bar_class: type | None) -> None:
        """``path`` into the staging folder; huggingface_hub resumes what an earlier call left there."""
        options = {"tqdm_class": bar_class} if TAKES_TQDM_CLASS and bar_class is not None else {}
        try:
            hf_hub_download(self.repo_id, path, revision=revision, local_dir=self.staging, endpoint=self.endpoint,
                            token=self.token, force_download=again, **options)
        except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, *_transport_errors()) as e:
            raise self._error(e, path) from None

    def _error(self, error: Exception, what: str) -> DownloadError:
        """The pack's error for what huggingface_hub raised while listing or fetching ``what``."""
        if isinstance(error, GatedRepoError) or (isinstance(error, HfHubHTTPError) and getattr(
                getattr(error, "response", None), "status_code", None) in (401, 403)):
            return DownloadError(path=self.url, expected=f"access to {what}",
                                 found=f"a gated or private repo ({_first_line(error)})",
                                 fix=f"accept the model's terms at {self.url} while logged in, then set HF_TOKEN "
                                 "to a token of that account")
        if isinstance(error, RepositoryNotFoundError):
            return DownloadError(path=self.url, expected="a model repository",
                                 found="none (or a private one this token cannot see)",
                                 fix="check the repo id; for a private or gated repo set HF_TOKEN")
        if isinstance(error, EntryNotFoundError):
            return DownloadError(path=self.url, expected=f"{what}, as the repo's listing names it",
                                 found=_first_line(error),
                                 fix="the repo may have changed during the download: run it again")
        if isinstance(error, OfflineModeIsEnabled):
            return self.manual_error("offline mode (HF_HUB_OFFLINE is set)")
        if isinstance(error, HfHubHTTPError):
            return DownloadError(path=self.url, expected=what, found=_first_line(error),
                                 fix="try again later, or check HF_ENDPOINT")
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            return DownloadError(path=self.staging, expected="room to write the download",
                                 found=f"{type(error).__name__}: {error}",
                                 fix="free disk space (or fix the folder's permissions) and run the download again: "
                                 "it keeps the files already verified")
        # Anything else is the network: huggingface_hub has retried it already.
        return DownloadError(path=self.url, expected=what,
                             found=f"no connection ({type(error).__name__}: {_first_line(error)})",
                             fix="check the connection and run the download again: it keeps the files already verified")
