"""Per-step U-Net time on the CPU: ComfyUI's loaded MODEL against diffusers, same random weights.

    .venv/bin/python benchmarks/unet_step.py                     # full: sd1 base/small/tiny + SD-1.4 teacher, 512²
    .venv/bin/python benchmarks/unet_step.py --sizes 256         # a quicker run
    .venv/bin/python benchmarks/unet_step.py --layouts sd1-tiny --sizes 512,1024 --batches 1,2   # memory rows
    .venv/bin/python benchmarks/unet_step.py --smoke             # BK-Tiny at 64x64, 1 warm-up + 1 timed call
    .venv/bin/python benchmarks/unet_step.py --comfy-attention pack --dtypes fp32,bf16,default --compile

One step is what a sampler costs per iteration: ComfyUI's ``model.apply_model`` of the
MODEL the pack builds (``nodes.build.build_model``, the loader's own last step), called as
KSampler's CFG batching calls it (cond and uncond in one batch of 2), against diffusers'
``UNet2DConditionModel`` forward on the same weights (``random_models.random_unet``).
Both run in the weight dtype under test (fp32 by default), under ``torch.inference_mode``;
calls alternate (ComfyUI, diffusers, ...) after a warm-up, and the medians are reported.
The two outputs are compared first, so the timings are of the same computation.

The ComfyUI step gets the MODEL's own ``transformer_options``, as the sampler passes
them (with the MODEL's wrappers merged in by the sampler's own ``prepare_model_patcher``),
so it runs the attention and the teacher addressing the MODEL carries. Each layout runs in
its own process, once per attention setting: ``pack`` is what the pack's loaders give on
the CPU (PyTorch SDPA for this MODEL alone, ``nodes/cpu.py``), ``comfyui`` the same MODEL
without that choice (ComfyUI's CPU default, sub-quadratic), and ``pytorch`` / ``split`` /
``quad`` ComfyUI started with that attention flag (the pack then keeps ComfyUI's choice).

``--dtypes default`` is the dtype the loaders' ``weight_dtype = default`` picks here (bf16 on a
CPU with native bf16), timed against diffusers' default, fp32. ``--compile`` also times each
MODEL through ComfyUI's TorchCompileModel node, after its eager calls, in the same process.

Memory: the peak RSS growth of one ComfyUI step over the RSS with the model loaded
(``memory.measure_call``: the kernel's high-water mark, reset before the step), taken on
the first call, before diffusers has run in the process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

from charts import bar_chart, save_chart, stacked
from comfy_model import compute_dtype, model_attention, torch_compiled, with_comfyui_attention
from memory import measure_call
from options import (
    COMFYUI_HELP,
    WORKDIR,
    add_chart_flag,
    add_compile_flags,
    comfyui_path,
    compile_env,
    csv_list,
    fill_defaults,
    smoke_help,
)
from output import load_line, machine_header, machine_line, median, progress, ratio, save_json, table, write_stdout
from pipelines import LAYOUTS, layout_list, teacher_of
from sampling import DIFFUSERS_DTYPE
from workers import is_worker, run_worker, worker_main

DTYPES = ("fp32", "bf16", "default")  # default: what the loaders' weight_dtype default gives on this machine
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # names of torch dtypes, resolved in the worker
ATTENTION_FLAGS = {"pack": [], "comfyui": [], "pytorch": ["--use-pytorch-cross-attention"], "split": [
    "--use-split-cross-attention"], "quad": ["--use-quad-cross-attention"]}
TIMESTEP = 500
FULL = {"layouts": "sd1-base,sd1-small,sd1-tiny,sd1-teacher", "sizes": "512", "warmup": 1, "repeats": 3}
SMOKE = {"layouts": "sd1-tiny", "sizes": "64", "warmup": 1, "repeats": 1}


# --------------------------------------------------------------------------- worker

def pack_model(config: dict, name: str, reference, weight_dtype: str):
    """The MODEL the pack's loaders build from the diffusers U-Net ``reference`` for the loader's
    ``weight_dtype`` choice: its state dict renamed by the pack, then the loader's own last steps
    (``nodes.build``), all from the one copy of the pack ComfyUI would load (``repo`` binds
    ``bksdm``; ``nodes`` needs the running host)."""
    from bksdm.files import components, unet_config
    from bksdm.layout import unet_keys
    from pack_import import pack_module

    build = pack_module("nodes.build")
    unet_spec = unet_config.spec_from_diffusers_config(config, name)
    state = unet_keys.convert_diffusers_unet(reference.state_dict(), unet_spec, name, unet_spec.describe())
    weights = components.UNetWeights(unet_spec, state, name)
    return build.build_model(weights, build.unet_dtype(weight_dtype, unet_spec), "epsilon")


def step_worker(spec: dict) -> dict:
    from cli import comfy_host

    comfy_host.configure(Path(spec["comfyui"]), ["--cpu", *ATTENTION_FLAGS[spec["attention"]]])
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sampler_helpers

    from random_models import random_unet, unet_config

    layout = LAYOUTS[spec["layout"]]
    config = unet_config(layout.config)
    start = time.perf_counter()
    reference = random_unet(config, seed=0)
    diffusers_dtype = getattr(torch, TORCH_DTYPES[DIFFUSERS_DTYPE.get(spec["dtype"], spec["dtype"])])
    patcher = pack_model(config, layout.config, reference, spec["dtype"])
    if spec["attention"] == "comfyui":  # the same MODEL without the pack's CPU attention choice
        patcher = with_comfyui_attention(patcher)
    comfy.model_management.load_models_gpu([patcher])  # as the sampler does: the MODEL's own patches apply
    model = patcher.model
    attention = model_attention(patcher)
    build_seconds = time.perf_counter() - start

    g = torch.Generator().manual_seed(1)
    latent = spec["size"] // 8
    x = torch.randn(spec["batch"], 4, latent, latent, generator=g)
    context = torch.randn(spec["batch"], 77, config["cross_attention_dim"], generator=g)
    sigma = model.model_sampling.sigma(torch.tensor(float(TIMESTEP))).repeat(spec["batch"])
    timesteps = torch.full((spec["batch"],), TIMESTEP)
    scaled = x / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()

    def step_of(patcher):
        """One U-Net call with the transformer_options a sampler gives it: the MODEL's own, with its
        wrappers (the pack's teacher addressing, a compile) merged in by the sampler's own step."""
        model_options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
        comfy.sampler_helpers.prepare_model_patcher(patcher, {}, model_options)
        options = model_options["transformer_options"]  # each call gets its own copy, as from the sampler
        return lambda: patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=dict(options))

    comfy_step = step_of(patcher)

    def diffusers_step():
        return reference(scaled.to(diffusers_dtype), timesteps,
                         encoder_hidden_states=context.to(diffusers_dtype)).sample

    with torch.inference_mode():
        first = measure_call(comfy_step)
        denoised = first.value
        # fp32: what a lower precision is measured against; then diffusers in the dtype under test
        expected = reference(scaled, timesteps, encoder_hidden_states=context).sample
        reference.to(diffusers_dtype)
        eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
        max_diff = (eps - expected).abs().max().item()
        scale = expected.abs().max().item()
        for _ in range(spec["warmup"]):
            comfy_step()
            diffusers_step()
        times = {"comfy": [], "diffusers": []}
        for _ in range(spec["repeats"]):
            for name, fn in (("comfy", comfy_step), ("diffusers", diffusers_step)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        compiled = compiled_step_times(patcher, step_of, spec["repeats"], eps, x, sigma) if spec["compile"] else {}
    processors = sorted({type(p).__name__ for p in reference.attn_processors.values()})
    return {
        "comfy_s": median(times["comfy"]), "diffusers_s": median(times["diffusers"]),
        "comfy_all": times["comfy"], "diffusers_all": times["diffusers"],
        "max_abs_diff": max_diff, "output_scale": scale, "build_seconds": build_seconds,
        "comfy_attention": attention, "comfy_step_peak_rss": first.peak_increase,
        "comfy_compute_dtype": compute_dtype(patcher),
        "diffusers_attention": ",".join(processors), "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in reference.parameters()), **compiled,
    }


def compiled_step_times(patcher, step_of, repeats: int, eager_eps, x, sigma) -> dict:
    """The same MODEL through ComfyUI's TorchCompileModel, on the same input, after the eager
    calls: the first call (the compile and one step), the median of ``repeats`` calls after it,
    the noise prediction's largest difference from eager's, and the compiles the repeats added."""
    import comfy.model_management
    import torch
    from torch._dynamo.utils import counters

    compiled = torch_compiled(patcher)
    comfy.model_management.load_models_gpu([compiled])
    step = step_of(compiled)
    torch._dynamo.reset()
    counters.clear()
    t0 = time.perf_counter()
    denoised = step()
    first_s = time.perf_counter() - t0
    graphs = counters["stats"]["unique_graphs"]
    if not graphs:
        raise RuntimeError("TorchCompileModel compiled nothing: its wrapper did not reach the U-Net call")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
    return {"compiled_s": median(times), "compiled_all": times, "compiled_first_s": first_s,
            "compiled_max_abs_diff": (eps - eager_eps).abs().max().item(),
            "graphs_compiled": graphs, "recompiles": counters["stats"]["unique_graphs"] - graphs}


# --------------------------------------------------------------------------- parent

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help=smoke_help(SMOKE, "run at the smallest size"))
    p.add_argument("--layouts", help=f"comma-separated, from {', '.join(LAYOUTS)} (default: {FULL['layouts']})")
    p.add_argument("--sizes", help=f"image sizes in pixels, comma-separated; the latent is size/8 "
                                   f"(default: {FULL['sizes']})")
    p.add_argument("--batches", default="2", help="U-Net batches, comma-separated: 2 = one image with CFG "
                                                  "(default: %(default)s)")
    p.add_argument("--warmup", type=int, help=f"untimed calls of each first (default: {FULL['warmup']})")
    p.add_argument("--repeats", type=int, help=f"timed calls of each; medians (default: {FULL['repeats']})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--comfy-attention", default="pack,comfyui",
                   help=f"attention settings to run, from {', '.join(ATTENTION_FLAGS)}: pack = the pack's choice, "
                        "comfyui = ComfyUI's default on this machine (default: %(default)s)")
    p.add_argument("--dtypes", default="fp32", help=f"weight dtypes, from {', '.join(DTYPES)}; bf16 is computed in "
                   "bf16 where the CPU has it natively (nodes/cpu.py) and compared with the fp32 reference; "
                   "default is the loaders' weight_dtype default, against diffusers' default, fp32 "
                   "(default: %(default)s)")
    add_compile_flags(p, "each MODEL")
    p.add_argument("--workdir", type=Path, default=WORKDIR, help="logs and JSON results (default: %(default)s)")
    p.add_argument("--comfyui", help=COMFYUI_HELP)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker process (default: %(default)s)")
    add_chart_flag(p)
    return fill_defaults(p.parse_args(argv), FULL, SMOKE)


log = progress("unet_step")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.chart:
        log(f"chart: {chart_from(args.chart)}")
        return 0
    layouts = layout_list(args.layouts)
    attentions = csv_list(args.comfy_attention, list(ATTENTION_FLAGS))
    dtypes = csv_list(args.dtypes, list(DTYPES))
    sizes = [int(n) for n in csv_list(args.sizes)]
    batches = [int(n) for n in csv_list(args.batches)]
    comfy = comfyui_path(args.comfyui)
    workdir = args.workdir.resolve()
    header = machine_header("BK-SDM U-Net step benchmark (CPU)", comfy, {
        "settings": f"image sizes {', '.join(f'{n}x{n}' for n in sizes)} (latent: size/8), U-Net batches "
                    f"{', '.join(map(str, batches))}, 77 tokens, t={TIMESTEP}; {args.warmup} warm-up + "
                    f"{args.repeats} timed calls each, alternating; medians; "
                    f"torch threads {args.threads or 'default'}"})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[Cell, dict] = {}
    script = Path(__file__).resolve()
    env = compile_env(args, workdir, stamp)
    for cell in (Cell(lay.name, a, d, size, batch) for size in sizes for batch in batches for d in dtypes
                 for a in attentions for lay in layouts):
        log(cell.name)
        spec = {"action": "step", **cell._asdict(), "comfyui": str(comfy), "warmup": args.warmup,
                "repeats": args.repeats, "threads": args.threads, "compile": args.compile}
        r = run_worker(script, spec, workdir / "logs" / f"unet_step-{stamp}-{cell.name.replace(' ', '-')}.log",
                       timeout=args.timeout, env=env)
        log(f"  ComfyUI {r['comfy_s'] * 1e3:.0f} ms ({r['comfy_attention']}), diffusers "
            f"{r['diffusers_s'] * 1e3:.0f} ms; outputs differ by {r['max_abs_diff']:.1e}; ComfyUI step peak RSS "
            f"growth {r['comfy_step_peak_rss'] / 2**20:.0f} MB" + (
                f"; compiled {r['compiled_s'] * 1e3:.0f} ms (first call {r['compiled_first_s']:.1f} s)"
                if args.compile else ""))
        results[cell] = r
    path = workdir / "results" / f"unet_step-{stamp}.json"
    header += load_line("at end") + "\n"
    save_json(path, {"header": header, "results": {cell.name: r for cell, r in results.items()}})
    drawn = save_chart(chart(results, header), path.with_suffix(".png"))
    write_stdout(header + "\n" + report(results, layouts)
                 + (compile_report(results, args.inductor_cache) if args.compile else "")
                 + f"\nchart: {drawn}\nraw results: {path}\n")
    return 0


def chart_from(results: Path) -> Path:
    """Draw the chart of an earlier run again from its raw results (``--chart``)."""
    import json

    saved = json.loads(results.read_text())
    cells = {Cell.from_name(name): r for name, r in saved["results"].items()}
    return save_chart(chart(cells, saved["header"]), results.with_suffix(".png"))


def chart(results: dict[Cell, dict], header: str):
    """Milliseconds per U-Net step by layout: the pack's MODEL per dtype (eager, and compiled where
    timed) and diffusers per dtype it ran (a default row's diffusers is its fp32: drawn once)."""
    values = {}
    for cell, r in results.items():
        group = f"{cell.layout} {cell.size}x{cell.size}" if len({c.size for c in results}) > 1 else cell.layout
        setting = "" if cell.attention == "pack" else f", {cell.attention} attention"
        values[group, f"pack in ComfyUI{setting} {cell.dtype}"] = r["comfy_s"] * 1e3
        if "compiled_s" in r:
            values[group, f"pack in ComfyUI{setting}, compiled {cell.dtype}"] = r["compiled_s"] * 1e3
        if cell.dtype in TORCH_DTYPES:  # diffusers ran in every cell of this dtype: its first time is drawn
            values.setdefault((group, f"diffusers {cell.dtype}"), r["diffusers_s"] * 1e3)
    groups = list(dict.fromkeys(g for g, _ in values))
    series = sorted(dict.fromkeys(s for _, s in values), key=lambda s: (s.startswith("diffusers"), "compiled" in s,
                                                                        DTYPES.index(s.rsplit(" ", 1)[1])))
    machine = machine_line(header)
    batch = ", ".join(sorted({str(c.batch) for c in results}))
    time = bar_chart(f"Milliseconds per U-Net step, batch {batch} (lower is faster)", "ms", groups, series, values,
                     note=machine)
    if len({(c.size, c.batch) for c in results}) == 1:
        return time
    # Over sizes and batches: the memory one step takes over the loaded model, as the table's column.
    memory = {(f"{c.layout} {c.size}x{c.size} b{c.batch}", f"{c.attention} attention {c.dtype}"):
              r["comfy_step_peak_rss"] / 2**20 for c, r in results.items()}
    return stacked(time, bar_chart("ComfyUI step peak RSS growth over the loaded model, MB (lower is leaner)", "MB",
                                   list(dict.fromkeys(g for g, _ in memory)),
                                   list(dict.fromkeys(s for _, s in memory)), memory))


class Cell(NamedTuple):
    """One measurement: a layout at one attention setting, weight dtype, image size and U-Net batch."""
    layout: str
    attention: str
    dtype: str
    size: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.layout} {self.attention} {self.dtype} {self.size}x{self.size} b{self.batch}"

    @classmethod
    def from_name(cls, name: str) -> Cell:
        layout, attention, dtype, size, batch = name.split(" ")
        return cls(layout, attention, dtype, int(size.split("x")[0]), int(batch.removeprefix("b")))


def report(results: dict[Cell, dict], layouts) -> str:
    rows = []
    for cell, r in results.items():
        lay = LAYOUTS[cell.layout]
        teacher = teacher_of(lay, layouts)
        tr = teacher and results.get(cell._replace(layout=teacher.name))
        fp32 = results.get(cell._replace(dtype="fp32"))
        rows.append([lay.name, f"{cell.size}x{cell.size}", cell.batch,
                     f"{cell.dtype} (computed in {r['comfy_compute_dtype']})",
                     f"{cell.attention} ({r['comfy_attention']})", r["params"] / 1e6, r["comfy_s"] * 1e3,
                     r["diffusers_s"] * 1e3, ratio(r["comfy_s"], r["diffusers_s"]),
                     ratio(r["comfy_s"], fp32 and fp32["diffusers_s"]),
                     ratio(r["comfy_s"], fp32 and fp32["comfy_s"]) if cell.dtype != "fp32" else "n/a",
                     r["comfy_step_peak_rss"] / 2**20,
                     ratio(tr and tr["comfy_s"], r["comfy_s"]),
                     ratio(tr and tr["diffusers_s"], r["diffusers_s"]),
                     f"{r['max_abs_diff']:.1e} / {r['output_scale']:.1f}"])
    return ("### U-Net step (medians)\n\n" + table(
        ["layout", "size", "U-Net batch", "weights", "ComfyUI attention", "U-Net M params", "ComfyUI ms",
         "diffusers ms", "ComfyUI/diffusers time", "ComfyUI/diffusers fp32 time", "ComfyUI time / fp32's",
         "ComfyUI step peak RSS growth MB",
         "speed-up vs teacher (ComfyUI)", "speed-up vs teacher (diffusers)", "max abs diff / max abs out"], rows)
        + "\n- diffusers ms: diffusers in the row's dtype (fp32, its default, for a default row). ComfyUI/diffusers "
          "(fp32) time < 1: ComfyUI's step is faster. Speed-up vs teacher: the same-family teacher's "
          "step time over this layout's, within one framework and attention setting (needs the teacher in "
          "--layouts).\n- max abs diff: largest difference between ComfyUI's noise prediction and diffusers' fp32 one "
          "on the same input (the same function: float rounding only, or the cost of a lower precision).\n")


def compile_report(results: dict[Cell, dict], inductor_cache: str) -> str:
    rows = []
    for cell, r in results.items():
        fp32 = results.get(cell._replace(dtype="fp32"))
        rows.append([cell.layout, f"{cell.size}x{cell.size}", cell.batch, cell.dtype, cell.attention,
                     r["comfy_s"] * 1e3, r["compiled_s"] * 1e3, ratio(r["compiled_s"], r["comfy_s"]),
                     ratio(r["compiled_s"], fp32 and fp32["diffusers_s"]),
                     r["compiled_first_s"] - r["compiled_s"], r["recompiles"], f"{r['compiled_max_abs_diff']:.1e}"])
    return ("\n### TorchCompileModel (U-Net step, medians)\n\n" + table(
        ["layout", "size", "U-Net batch", "weights", "ComfyUI attention", "eager ms", "compiled ms", "x eager",
         "x diffusers fp32 eager", "compile s", "graphs compiled after the first call", "max abs diff vs eager"],
        rows) + f"\n- compile s: the first compiled call less a compiled step (inductor cache: {inductor_cache}). "
                "max abs diff: the compiled noise prediction against the eager one, same input.\n")


if __name__ == "__main__":
    if is_worker():
        worker_main({"step": step_worker})
    else:
        sys.exit(main())
