"""The repository root, put on ``sys.path``: the benchmark scripts run as files
(``python benchmarks/load.py``) and import ``cli`` and ``random_models`` from it (the pack
itself through ``cli.comfy_host.pack_module``, as ComfyUI names it). Never ``tests/``: what
the benchmarks share with the tests is in ``random_models``."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
