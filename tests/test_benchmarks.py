"""The GPU benchmark's code path, on the CPU at a tiny size (``--smoke``): it runs to the end on
this ComfyUI, with one ComfyUI process per DynamicVRAM setting where the release has it.
What it measures belongs in BENCHMARKS.md, not here: nothing is timed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import comfy_host

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_runs_each_dynamic_vram_setting(tmp_path):
    comfy = comfy_host.find_comfyui()
    run = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", "--workdir", str(tmp_path / "work"),
                          "--out", str(tmp_path / "out"), "--comfyui", str(comfy)],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={k: v for k, v in os.environ.items() if k != "OUT"})
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "gpu-results.json").read_text())["rows"]
    has_dynamic_vram = "--disable-dynamic-vram" in (comfy / "comfy" / "cli_args.py").read_text()
    settings = {r["dynamic_vram"] for r in rows if r["framework"] == "ComfyUI"}
    assert settings == ({"on", "off"} if has_dynamic_vram else {"n/a"})
    assert {r["framework"] for r in rows} == {"ComfyUI", "diffusers"}
    assert all(r["finite"] and r["its"] > 0 for r in rows)
    assert "| DynamicVRAM (patcher) |" in run.stdout
