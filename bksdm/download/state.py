"""What a models folder already holds of a download, and whether a file is what the hub lists.

A finished folder carries ``.bksdm-download.json`` (repo, revision, the hub's listing and the
verified files); the hidden staging folder of an unfinished download carries the same. A
repeated request is answered from it without the network, a later request for more weights
adds only the missing files, and a folder the user made is never overwritten.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os

from ..errors import BKSDMError, DownloadError
from ..files.pipeline import HIDDEN_PREFIX, open_model_folder, weights_file
from .plan import COMPONENTS, REQUIRED_CONFIGS, RemoteFile, may_take, select_files

STAGING_PREFIX = HIDDEN_PREFIX + "bksdm-partial-"
MARKER = HIDDEN_PREFIX + "bksdm-download.json"


def local(folder: str, path: str) -> str:
    return os.path.join(folder, *path.split("/"))


def size_of(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def read_marker(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    # Only names the pack itself takes: a damaged or planted marker must not name paths elsewhere.
    valid = (isinstance(marker, dict) and isinstance(marker.get("repo_id"), str)
             and isinstance(marker.get("files"), list) and isinstance(marker.get("repo_files"), dict)
             and all(may_take(p) and isinstance(e, dict) and isinstance(e.get("size"), int)
                     for p, e in marker["repo_files"].items()))
    return marker if valid else None


def write_marker(folder: str, marker: dict) -> None:
    path = os.path.join(folder, MARKER)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def present(folder: str, marker: dict, path: str) -> bool:
    """Recorded as verified in ``folder``, and still of the listed size on disk."""
    entry = marker["repo_files"].get(path)
    return path in marker["files"] and entry is not None and size_of(local(folder, path)) == entry["size"]


class FolderState(enum.Enum):
    """What the destination folder holds, for one request (a repo and a choice of weights)."""

    ABSENT = "absent"  # nothing, or an empty folder
    COMPLETE = "complete"  # every file the request takes, verified; or a loadable model folder the user made
    UNFINISHED = "unfinished"  # our download of this repo, lacking files this request takes
    OTHER_REPO = "other repo"  # our download of another repo under the same folder name
    FOREIGN = "foreign"  # a folder the pack did not download, with no loadable model in it


def folder_state(dest: str, repo_id: str, weights: str) -> FolderState:
    if not os.path.lexists(dest) or (os.path.isdir(dest) and not os.listdir(dest)):
        return FolderState.ABSENT
    marker = read_marker(dest)
    if marker is None:
        return FolderState.COMPLETE if _loadable(dest, weights) else FolderState.FOREIGN
    if marker["repo_id"] != repo_id:
        return FolderState.OTHER_REPO
    try:
        wanted = select_files(marker["repo_files"], weights, dest)
    except DownloadError:
        return FolderState.UNFINISHED
    return FolderState.COMPLETE if all(present(dest, marker, p) for p in wanted) else FolderState.UNFINISHED


def refuse_to_overwrite(state: FolderState, dest: str, repo_id: str) -> None:
    """The pack never writes into a folder it did not download, nor into another repo's."""
    if state is FolderState.OTHER_REPO:
        other = read_marker(dest)["repo_id"]
        raise DownloadError(path=dest, expected=f"no folder there, or one downloaded from {repo_id}",
                            found=f"a folder downloaded from {other}",
                            fix="rename or delete that folder, or download into another models folder")
    if state is FolderState.FOREIGN:
        raise DownloadError(path=dest, expected="no folder there, or a complete model folder",
                            found="a folder this pack did not download, without a loadable model in it",
                            fix="move it away or delete it, then download again (the pack never overwrites it)")


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


def verify(path: str, remote: RemoteFile) -> str | None:
    """None when ``path`` holds the file the hub lists, else what is wrong with it.

    huggingface_hub checks the size of what it receives; the content is the pack's check, so
    that a corrupted file is never moved into place."""
    size = size_of(path)
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


def _digest(path: str, hasher, prefix: bytes = b"") -> str:
    hasher.update(prefix)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
