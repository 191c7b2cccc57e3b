"""The suite runs in a checkout named as git names the clone (ComfyUI-BK-SDM), not only in one
whose folder name is a Python identifier. pytest imports such a checkout's ``__init__.py`` as a
bare module (where the pack's relative import of its node layer cannot work) and puts the
checkout ahead of ComfyUI on sys.path (where the pack's ``nodes/`` hides ComfyUI's ``nodes``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEFT_BEHIND = shutil.ignore_patterns(".git", ".venv*", "__pycache__", ".*_cache", ".hypothesis", "output")
# One test of the core and one that starts ComfyUI with the pack.
TESTS = ["tests/test_addresses.py", "tests/test_cpu_compute.py::test_gpu_models_keep_comfyuis_choice"]


@pytest.mark.host
def test_the_suite_runs_in_a_checkout_named_comfyui_bk_sdm(tmp_path):
    from conftest import HOST_PATH

    checkout = tmp_path / "ComfyUI-BK-SDM"
    shutil.copytree(REPO, checkout, ignore=LEFT_BEHIND)
    # Its own temporary folder: a second pytest session must not prune this session's folders.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--basetemp={tmp_path / 'basetemp'}", *TESTS],
                         cwd=checkout, env={**os.environ, "COMFYUI_PATH": str(HOST_PATH)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
