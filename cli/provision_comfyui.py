"""Get the ComfyUI that the main job (and the test suite) runs on when none is given.

    python -m cli.provision_comfyui        # prints the path of a ComfyUI checkout

Order: ``COMFYUI_PATH``; the ComfyUI this pack is installed in (``custom_nodes/..``);
else a pinned ComfyUI release, fetched once from ``COMFYUI_SOURCE`` (a git URL, or a
``.tar.gz`` of ComfyUI's source; default: ComfyUI's public repository at the pinned
commit) and unpacked under the user's cache, never inside this project.
``BKSDM_COMFYUI_VERSION`` picks the release (default: the newest supported).
:func:`install_once` also fetches the node packs the tests mix with (``tests/thirdparty.py``).

Standard library only: ``scripts/env.sh`` runs it before any environment exists.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger("bksdm.provision")

PACK_DIR = Path(__file__).resolve().parents[1]
UPSTREAM = "https://github.com/comfyanonymous/ComfyUI"
# The releases the pack is tested on, oldest first; the last is the default.
SUPPORTED = {
    "0.3.64": "a125cd84b054a57729b5eecab930ca9408719832",
    "0.33.0": "783545f689a0af730065994b46b382ae24844c99",
}
NEWEST = list(SUPPORTED)[-1]

class ProvisionError(RuntimeError):
    """ComfyUI could not be found or fetched; the message says what to do."""


def is_comfyui(path: Path) -> bool:
    return all((path / name).is_file() for name in ("main.py", "nodes.py", "folder_paths.py", "comfy/sd.py"))


def comfyui_version(path: Path) -> str | None:
    """The version a checkout declares in ``comfyui_version.py`` (None where it has none)."""
    try:
        text = (path / "comfyui_version.py").read_text()
    except OSError:
        return None
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else None


def requested_version() -> str:
    version = os.environ.get("BKSDM_COMFYUI_VERSION") or NEWEST
    if version not in SUPPORTED:
        raise ProvisionError(f"BKSDM_COMFYUI_VERSION={version} is not a supported ComfyUI release; "
                             f"expected one of {', '.join(SUPPORTED)}, or set COMFYUI_PATH to a ComfyUI of your own")
    return version


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bk-sdm-comfyui"


def provisioned_path(version: str) -> Path:
    return cache_root() / f"ComfyUI-{version}-{SUPPORTED[version][:8]}"


def given_or_installed() -> Path | None:
    """``COMFYUI_PATH``, else the ComfyUI this pack sits in as a custom node."""
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).expanduser()
    installed = PACK_DIR.parent.parent
    return installed if PACK_DIR.parent.name == "custom_nodes" and is_comfyui(installed) else None


def unpack_archive(archive: Path, into: Path, check=is_comfyui, what: str = "ComfyUI",
                    fix: str = "point COMFYUI_SOURCE at a ComfyUI .tar.gz or git URL") -> Path:
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")  # refuses links and paths that leave `into`
            else:
                tar.extractall(into)  # Pythons before 3.10.12 lack the filter
    except tarfile.TarError as e:
        raise ProvisionError(f"{archive} is not a readable {what} source archive ({str(e).splitlines()[0]}); "
                             + fix) from None
    tops = [p for p in into.iterdir() if p.is_dir()]
    if len(tops) != 1 or not check(tops[0]):
        raise ProvisionError(f"{archive} is not a {what} source archive: expected one top folder holding its "
                             f"source, found {sorted(p.name for p in into.iterdir())}; "
                             + fix)
    return tops[0]


def clone(url: str, commit: str, into: Path, what: str = "ComfyUI",
           fix: str = "set COMFYUI_SOURCE to a ComfyUI .tar.gz, or COMFYUI_PATH to a ComfyUI checkout") -> Path:
    checkout = into / what
    steps = [["git", "init", "--quiet", str(checkout)],
             ["git", "-C", str(checkout), "fetch", "--quiet", "--depth", "1", url, commit],
             ["git", "-C", str(checkout), "checkout", "--quiet", "FETCH_HEAD"]]
    for step in steps:
        try:
            subprocess.run(step, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise ProvisionError(f"fetching {what} needs git: install git, or {fix}") from None
        except subprocess.CalledProcessError as e:
            raise ProvisionError(f"could not fetch {what} {commit[:8]} from {url}: {e.stderr.strip()}; check the "
                                 f"network, or {fix}") from None
    return checkout


def install_once(target: Path, check, what: str, source, fetch) -> Path:
    """``target`` as ``fetch(staging)`` makes it, fetched once: into a staging folder beside it,
    then one rename, so a half-fetched copy is never taken for a finished one."""
    if check(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from %s into %s", what, source, target)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=target.parent) as staging:
        checkout = fetch(Path(staging))
        try:
            checkout.rename(target)
        except OSError:
            if not check(target):  # else another set-up finished first: use its copy
                raise
    return target


def provision(version: str, source: str) -> Path:
    """Unpack (or clone) ComfyUI ``version`` from ``source`` into the cache, once, atomically."""
    def fetch(staging: Path) -> Path:
        archive = Path(source).expanduser()
        if archive.is_file():
            checkout = unpack_archive(archive, staging)
        elif re.match(r"^(https?|ssh|git|file)://|^[\w.-]+@", source):
            checkout = clone(source, SUPPORTED[version], staging)
        else:
            raise ProvisionError(f"COMFYUI_SOURCE={source} is neither a file nor a git URL; expected a ComfyUI "
                                 f".tar.gz or a git URL such as {UPSTREAM}")
        found = comfyui_version(checkout)
        if found != version:
            raise ProvisionError(f"{source} holds ComfyUI {found or 'of unknown version'}, expected {version}; "
                                 f"set BKSDM_COMFYUI_VERSION={found} if that release is supported "
                                 f"({', '.join(SUPPORTED)}), or point COMFYUI_SOURCE at the release you asked for")
        return checkout

    return install_once(provisioned_path(version), is_comfyui, f"ComfyUI {version}", source, fetch)


def find_or_provision() -> Path:
    given = given_or_installed()
    if given is not None:
        if not is_comfyui(given):
            raise ProvisionError(f"COMFYUI_PATH={given} is not a ComfyUI checkout (no main.py, nodes.py, comfy/sd.py "
                                 "there); point it at the folder that holds ComfyUI's main.py, or unset it")
        return given.resolve()
    version = requested_version()
    return provision(version, os.environ.get("COMFYUI_SOURCE") or UPSTREAM)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if argv:
        log.error("usage: python -m cli.provision_comfyui")
        return 2
    try:
        path = find_or_provision()
    except (ProvisionError, OSError) as e:
        log.error("BK-SDM: cannot set up ComfyUI: %s", e)
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
