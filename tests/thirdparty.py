"""The pinned third-party node packs the tests load beside this one, as a user's custom_nodes
would hold them: fetched once into the same cache as ComfyUI, from ``BKSDM_THIRDPARTY_SOURCE``
(a folder of ``<pack>-<commit8>.tar.gz`` source archives) or else from each pack's repository.

    python3 -m tests.thirdparty        # prints the path of each pack (scripts/test.sh runs it)

Workshop only: the product never imports this. Standard library only, like the ComfyUI
provisioning it builds on.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from cli.provision_comfyui import ProvisionError, cache_root, clone, install_once, unpack_archive

log = logging.getLogger("bksdm.thirdparty")

# Each pack at one commit for every supported ComfyUI, or, where the pack moved with ComfyUI's
# APIs, at the commit contemporary with each supported release (../shared/thirdparty/README.md).
PACKS = {
    "ComfyUI_IPAdapter_plus": ("https://github.com/cubiq/ComfyUI_IPAdapter_plus",
                               "9d076a3df0d2763cef5510ec5ab807f6632c39f5"),
    "ComfyUI-IC-Light": ("https://github.com/kijai/ComfyUI-IC-Light", "22811d903af8a90100dccef1c4b579526649a6ab"),
    "ComfyUI-BrushNet": ("https://github.com/nullquant/ComfyUI-BrushNet", "505d8ef917ddf3896afd1926770ecc9b099704e2"),
    "ComfyUI-layerdiffuse": ("https://github.com/huchenlei/ComfyUI-layerdiffuse",
                             "fffa28a7b1c10fc10c012b59b83f3e0a729e00ba"),
    "comfyui_jankhidiffusion": ("https://github.com/blepping/comfyui_jankhidiffusion",
                                "54d60e0d187a391682633ab5b6211fd8fe4d73bb"),
    "ComfyUI-AnimateDiff-Evolved": ("https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved",
                                    {"0.3.64": "90fb1331201a4b29488089e4fbffc0d82cc6d0a9",
                                     "0.33.0": "d8d163cd90b1111f6227495e3467633676fbb346"}),
    "ComfyUI-Advanced-ControlNet": ("https://github.com/Kosinkadink/ComfyUI-Advanced-ControlNet",
                                    {"0.3.64": "2bde95a468ce5fd3959f646258606ae221fa1e17",
                                     "0.33.0": "9e60d8a9c8016c5315063aa7af66b321a0444df7"}),
}


def commits(name: str) -> list[str]:
    pinned = PACKS[name][1]
    return sorted(set(pinned.values())) if isinstance(pinned, dict) else [pinned]


def commit_for(name: str, comfyui_version: str | None) -> str:
    """The pinned commit of a pack to run beside this ComfyUI release."""
    pinned = PACKS[name][1]
    if not isinstance(pinned, dict):
        return pinned
    if comfyui_version not in pinned:
        raise ProvisionError(f"{name} is pinned for ComfyUI {', '.join(pinned)} only, not {comfyui_version}: "
                             "pin the commit of it contemporary with that release in tests/thirdparty.py")
    return pinned[comfyui_version]


def is_node_pack(path: Path) -> bool:
    return (path / "__init__.py").is_file()


def pack_path(name: str, commit: str) -> Path:
    return cache_root() / "thirdparty" / f"{name}-{commit[:8]}"


def provision(name: str, commit: str, archives: str | None) -> Path:
    """Unpack (or clone) a pinned node pack into the cache, once, atomically."""
    url = PACKS[name][0]
    archive = Path(archives).expanduser() / f"{name}-{commit[:8]}.tar.gz" if archives else None

    def fetch(staging: Path) -> Path:
        if archive is None:
            return clone(url, commit, staging, name, "set BKSDM_THIRDPARTY_SOURCE to a folder holding "
                         f"{name}-{commit[:8]}.tar.gz, the source archive of {url} at that commit")
        if not archive.is_file():
            raise ProvisionError(f"BKSDM_THIRDPARTY_SOURCE={archives} has no {archive.name}; expected the "
                                 f"source archive of {url} at {commit[:8]} there, or unset it to clone {url}")
        return unpack_archive(archive, staging, is_node_pack, name,
                              f"replace it with the source archive of {url} at {commit[:8]}")

    return install_once(pack_path(name, commit), is_node_pack, f"{name} {commit[:8]}", archive or url, fetch)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        archives = os.environ.get("BKSDM_THIRDPARTY_SOURCE")
        paths = [provision(name, commit, archives) for name in PACKS for commit in commits(name)]
    except (ProvisionError, OSError) as e:
        log.error("BK-SDM tests: cannot fetch the third-party node packs: %s", e)
        return 1
    sys.stdout.write("".join(f"{path}\n" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
