"""The benchmarks' code paths, each at its smallest (``--smoke``): it runs to the end on this
ComfyUI and reports complete rows. What they measure belongs in BENCHMARKS.md, not here:
nothing is timed, and no timing is asserted on."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pack_import
from cli import comfy_host

# The workshop's benchmarks measure on the ComfyUI users run today, the newest supported release
# (.ci/run runs them on it alone): they are not what a user's ComfyUI loads.
pytestmark = [pytest.mark.host, pytest.mark.newest_comfyui]
REPO = Path(__file__).resolve().parents[1]


def run_smoke(script: str, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", "--comfyui",
                          str(comfy_host.find_comfyui()), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={k: v for k, v in os.environ.items() if k != "OUT"})
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def raw_results(run: subprocess.CompletedProcess) -> Path:
    """The JSON file the report's last line names."""
    return Path(re.search(r"^raw results: (.+)$", run.stdout, re.M)[1])


def assert_charted(run: subprocess.CompletedProcess, script: str, bars: int) -> None:
    """The run's chart is a picture beside its raw results, and --chart draws it again from them."""
    from PIL import Image

    chart = Path(re.search(r"^chart: (.+)$", run.stdout, re.M)[1])
    assert chart == raw_results(run).with_suffix(".png")
    drawn = Image.open(chart)
    assert drawn.format == "PNG" and drawn.width == 1200 and drawn.height > 150 + 26 * bars
    chart.unlink()
    again = subprocess.run([sys.executable, f"benchmarks/{script}", "--chart", str(raw_results(run))], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and chart.is_file(), again.stderr


@pytest.fixture(scope="module")
def sampling_workdir(model_folder):
    """One workdir for the sampling benchmarks' smoke runs: the random pipeline is written once."""
    with model_folder("sampling-bench") as workdir:
        yield workdir


def test_gpu_benchmark_smoke_runs_each_dynamic_vram_setting(tmp_path, sampling_workdir):
    comfy = comfy_host.find_comfyui()
    run = run_smoke("gpu.py", "--workdir", str(sampling_workdir), "--out", str(tmp_path / "out"))
    rows = json.loads((tmp_path / "out" / "gpu-results.json").read_text())["rows"]
    has_dynamic_vram = "--disable-dynamic-vram" in (comfy / "comfy" / "cli_args.py").read_text()
    settings = {r["dynamic_vram"] for r in rows if r["framework"] == "ComfyUI"}
    assert settings == ({"on", "off"} if has_dynamic_vram else {"n/a"})
    assert {r["framework"] for r in rows} == {"ComfyUI", "diffusers"}
    assert all(r["finite"] and r["its"] > 0 for r in rows)
    assert "| DynamicVRAM (patcher) |" in run.stdout


def test_load_benchmark_smoke_loads_the_same_files_with_both_loaders():
    run = run_smoke("load.py")  # in a temporary workdir: the random pipeline's gigabytes are gone at the end
    results = raw_results(run)
    workdir = results.parents[1]
    summary = json.loads(results.read_text())["summary"]
    assert not (workdir / "diffusers").exists()
    assert_charted(run, "load.py", bars=4)  # time and memory, each by the pack and by diffusers
    shutil.rmtree(workdir)
    assert set(summary) == {"sd1-tiny fp16 pack", "sd1-tiny fp16 diffusers"}
    fp16_files = {"unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors",
                  "vae/diffusion_pytorch_model.fp16.safetensors"}
    for cell in summary.values():
        assert set(cell["files_read"]) == fp16_files
        assert cell["weight_bytes"] > 0 and cell["model_bytes"] > 0
    assert summary["sd1-tiny fp16 pack"]["weight_bytes"] == summary["sd1-tiny fp16 diffusers"]["weight_bytes"]
    for loader in ("pack", "diffusers"):
        assert re.search(rf"^\| sd1-tiny +\| fp16 +\| {loader} +\|", run.stdout, re.M), run.stdout
    assert "### Ratios and targets" in run.stdout


def test_unet_step_benchmark_smoke_computes_the_same_step_in_both_frameworks(tmp_path):
    run = run_smoke("unet_step.py", "--workdir", str(tmp_path / "work"))
    results = json.loads(raw_results(run).read_text())["results"]
    assert set(results) == {"sd1-tiny pack fp32 64x64 b2", "sd1-tiny comfyui fp32 64x64 b2"}
    for r in results.values():
        assert r["params"] == 323_384_964  # BK-Tiny's U-Net
        assert math.isfinite(r["output_scale"]) and r["output_scale"] > 0
        assert math.isfinite(r["max_abs_diff"]) and r["max_abs_diff"] < 1e-3 * r["output_scale"]  # float rounding
    assert results["sd1-tiny comfyui fp32 64x64 b2"]["comfy_attention"] != "attention_pytorch (per model)"
    for attention in ("pack", "comfyui"):
        row = rf"^\| sd1-tiny +\| 64x64 +\| 2 +\| fp32 \(computed in float32\) +\| {attention} \("
        assert re.search(row, run.stdout, re.M), run.stdout


def test_unet_step_benchmark_smoke_times_the_default_dtype_eager_and_compiled(tmp_path):
    """The loaders' default dtype (bf16 on a CPU with native bf16, else fp32) against diffusers'
    default, fp32, and the same MODEL through TorchCompileModel: compiled once, the same step."""
    run = run_smoke("unet_step.py", "--workdir", str(tmp_path / "work"), "--comfy-attention", "pack",
                    "--dtypes", "default", "--compile")
    results = json.loads(raw_results(run).read_text())["results"]
    assert set(results) == {"sd1-tiny pack default 64x64 b2"}
    assert re.search(r"^- load average at start: [0-9.]+ \(1 min\), [0-9.]+ \(5 min\) — (quiet|BUSY)", run.stdout, re.M)
    assert re.search(r"^- load average at end: ", run.stdout, re.M)
    assert_charted(run, "unet_step.py", bars=2)  # the pack eager and compiled (diffusers' default is fp32's)
    r = results["sd1-tiny pack default 64x64 b2"]
    native = pack_import.pack_module("nodes.cpu").cpu_has_native_bf16()
    assert r["comfy_compute_dtype"] == ("bfloat16" if native else "float32")
    tolerance = 5e-2 if native else 1e-3  # bf16's cost against diffusers' fp32, or float rounding
    assert r["max_abs_diff"] < tolerance * r["output_scale"]
    assert r["compiled_s"] > 0 and r["compiled_first_s"] > r["compiled_s"]
    assert r["graphs_compiled"] > 0 and r["recompiles"] == 0
    assert r["compiled_max_abs_diff"] < tolerance * r["output_scale"]
    number = r"[0-9.]+ +\|"  # eager ms, compiled ms, x eager; then n/a (no fp32 row), compile s, 0 recompiles
    compiled_row = (rf"^\| sd1-tiny +\| 64x64 +\| 2 +\| default +\| pack +\| {number} {number} {number} "
                    rf"n/a +\| {number} 0 +\|")
    assert re.search(compiled_row, run.stdout.split("### TorchCompileModel (U-Net step")[1], re.M), run.stdout


def test_cpu_txt2img_benchmark_smoke_times_whole_images_per_attention_setting(sampling_workdir, host):
    # ComfyUI at both attention settings in fp32, in bf16 computed in bf16 (forced: this CPU may lack
    # native bf16, and diffusers' emulated bf16 VAE takes minutes) and at the loader's default, then
    # diffusers in fp32 (its default: no row of its own).
    comfy_run = run_smoke("cpu_txt2img.py", "--workdir", str(sampling_workdir), "--frameworks", "comfyui",
                          "--dtypes", "fp32,bf16,default", "--force-bf16-compute")
    diffusers_run = run_smoke("cpu_txt2img.py", "--workdir", str(sampling_workdir), "--frameworks", "diffusers",
                              "--dtypes", "fp32,default")
    rows = [*json.loads(raw_results(comfy_run).read_text())["rows"],
            *json.loads(raw_results(diffusers_run).read_text())["rows"]]
    cells = {(r["framework"], r.get("attention_setting"), r["dtype"]): r for r in rows}
    assert set(cells) == {("ComfyUI", attention, dtype) for attention in ("pack", "comfyui")
                          for dtype in ("fp32", "bf16", "default")} | {("diffusers", None, "fp32")}
    for r in rows:
        assert r["finite"] and r["encode_s"] > 0 and r["seconds"] > 0 and r["decode_s"] > 0
        assert r["sampling_peak_rss"] >= 0 and Path(r["image"]).is_file()
    native = "bfloat16" if pack_import.pack_module("nodes.cpu").cpu_has_native_bf16() else "float32"
    default = cells[("ComfyUI", "pack", "default")]
    assert (default["compute_dtype"], default["vae_dtype"]) == (native, native)
    assert cells[("ComfyUI", "pack", "bf16")]["vae_dtype"] == "float32"  # an explicit choice: ComfyUI's VAE
    assert cells[("ComfyUI", "pack", "fp32")]["attention"] == "attention_pytorch (per model)"
    assert cells[("ComfyUI", "comfyui", "fp32")]["attention"] != "attention_pytorch (per model)"
    for attention in ("pack", "comfyui"):
        bf16 = cells[("ComfyUI", attention, "bf16")]
        assert bf16["compute_dtype"] == "bfloat16"
        assert 0 < bf16["vs_fp32"]["max_abs"] <= 255 and bf16["vs_fp32"]["psnr_db"] > 0  # the same seed, rounded
    side_by_side = Path(re.search(r"^images: (.+)$", comfy_run.stdout, re.M)[1]) / "side-by-side-sd1-tiny.png"
    assert side_by_side.is_file()
    assert_charted(comfy_run, "cpu_txt2img.py", bars=6)
    assert re.search(r"^\| sd1-tiny +\| fp32 \(computed in float32; VAE float32\) +\| 1 +\| diffusers \(",
                     diffusers_run.stdout, re.M), diffusers_run.stdout


def test_cpu_txt2img_benchmark_smoke_compares_the_compiled_model_with_the_eager_one(sampling_workdir):
    run = run_smoke("cpu_txt2img.py", "--workdir", str(sampling_workdir), "--frameworks", "comfyui",
                    "--comfy-attention", "pack", "--compile")
    rows = json.loads(raw_results(run).read_text())["rows"]
    assert [(r["framework"], r["dtype"]) for r in rows] == [("ComfyUI", "fp32"), ("ComfyUI+compile", "fp32")]
    compiled = rows[1]
    assert "error" not in compiled, compiled.get("error")
    assert compiled["finite"] and compiled["warmup_s"] > 0 and Path(compiled["image"]).is_file()
    assert re.search(r"^\| sd1-tiny +\| fp32 +\| 1 +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.-]+ +\| [0-9.]+ +\| "
                     r"([0-9.]+|never) +\|$", run.stdout.split("### TorchCompileModel (CPU)")[1], re.M), run.stdout


def test_animatediff_benchmark_smoke_times_an_animation_through_animatediff_evolved(sampling_workdir, thirdparty):
    path = thirdparty("ComfyUI-AnimateDiff-Evolved")
    run = run_smoke("animatediff.py", "--workdir", str(sampling_workdir), "--animatediff-evolved", str(path))
    (row,) = json.loads(raw_results(run).read_text())["rows"]
    assert row["model"] == "sd1-tiny" and row["frames"] == 4 and row["finite"]
    assert row["sampling_s"] > 0 and row["decode_s"] > 0
    native = "bfloat16" if pack_import.pack_module("nodes.cpu").cpu_has_native_bf16() else "float32"
    assert row["dtype"] == native  # the loader's default, which the motion modules follow
    assert re.search(r"^\| sd1-tiny +\| " + native + r" +\| 4 +\|", run.stdout, re.M), run.stdout


def test_chart_legend_entries_never_run_into_each_other():
    """Each legend entry is as wide as its name: the next one on its line starts past it, a line never
    runs past the picture's edge, and entries that do not fit wrap to the next line."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import charts
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from PIL import Image, ImageDraw

    names = ["pack in ComfyUI fp32", "pack in ComfyUI, ComfyUI's attention fp32", "diffusers fp32",
             "pack in ComfyUI, ComfyUI's attention bf16", "diffusers bf16"]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    ends = [charts.SWATCH + measure.textlength(name, font=charts.font(18)) for name in names]
    places = charts.legend_places(names)
    for (x, line), end, (next_x, next_line) in zip(places, ends, places[1:], strict=False):
        assert next_line > line or next_x > x + end
    assert all(x + end <= charts.WIDTH - charts.MARGIN for (x, _), end in zip(places, ends, strict=True))
    assert places[0] == (charts.MARGIN, 0) and places[-1][1] >= 1
