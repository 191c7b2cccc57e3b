"""The repository root, put on ``sys.path``, and the pack bound to the names ``cli`` and ``bksdm``:
the benchmark scripts run as files (``python benchmarks/load.py``) and import ``cli``,
``bksdm`` and ``random_models`` from it, the pack's modules as the one copy ComfyUI loads
(``pack_import``). Never ``tests/``: what the benchmarks share with the tests is in
``random_models``."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pack_import  # noqa: E402

pack_import.bind_names("cli", "bksdm")
