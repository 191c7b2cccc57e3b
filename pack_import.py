"""Import this folder as ComfyUI imports a custom node pack, for code that runs it from outside:
the pack's commands (``__main__.py``), the tests and the benchmarks. The pack itself never
imports this module.

ComfyUI's custom-node loader imports the folder as a package named after its path. Importing it
under that same name means a process that also runs ComfyUI holds one copy of each module,
whichever of the two imports it first: one error hierarchy, one running host. Inside the
package every dependency is a relative import (``from ..bksdm import pipeline``). Standard
library only.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

PACK_DIR = Path(__file__).resolve().parent
# The module name ComfyUI's nodes.load_custom_node gives this folder: its path, dots escaped.
PACK_MODULE = str(PACK_DIR).replace(".", "_x_")


def import_pack() -> ModuleType:
    """This pack's package, imported as ``load_custom_node(str(PACK_DIR))`` imports it (or as it already did)."""
    if PACK_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_MODULE, PACK_DIR / "__init__.py")
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[PACK_MODULE]
            raise
    return sys.modules[PACK_MODULE]


def pack_module(name: str) -> ModuleType:
    """A module of this pack by its name inside the pack (``cli.txt2img``, ``nodes.build``)."""
    import_pack()
    return importlib.import_module(f"{PACK_MODULE}.{name}")


def bind_names(*packages: str) -> None:
    """Make top-level ``import cli`` / ``import bksdm`` (and every module under them) give the pack's own copies,
    as the tests and the benchmarks import them. Not for a process that loads other node packs:
    it claims those names for this pack."""
    for name in packages:
        package = pack_module(name)
        sys.modules[name] = package
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            sys.modules[module.name] = pack_module(module.name)
