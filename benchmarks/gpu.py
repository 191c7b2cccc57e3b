"""GPU sampling benchmark: it/s and peak VRAM of txt2img in ComfyUI (this pack's loader) and diffusers.

    python benchmarks/gpu.py --workdir /dev/shm/bksdm-bench          # CUDA: the full matrix, < 10 min on one H100
    .venv/bin/python benchmarks/gpu.py --smoke                       # CPU: the same code path at a tiny size

For BK-Base/Small/Tiny and the SD-1.4-shaped teacher (random weights from the real
configs, one pipeline folder each, written once under --workdir): 512x512, euler, CFG 7,
batch 1 and 4, fp16 and bf16.

- ComfyUI: the pack's ``BKSDMPipelineLoader`` loads the folder, ``CLIPTextEncode`` and
  ``EmptyLatentImage`` make the inputs, and ``nodes.common_ksampler`` samples: the very
  function the KSampler node runs (noise, CFG guider, cond/uncond batching, model
  management, preview callback), under ``torch.inference_mode`` as ComfyUI's executor
  runs nodes. Only the sampling call is timed.
- ComfyUI + TorchCompileModel: the same MODEL through ComfyUI's ``TorchCompileModel``
  node (inductor), fp16 only, batch 1 by default, as long as the time budget allows.
- diffusers: ``StableDiffusionPipeline.from_pretrained`` on the same folder (fp16 reads
  the fp16 files, as the pack does), ``EulerDiscreteScheduler``, prompt embeddings
  computed once, ``output_type="latent"``: the denoising loop alone, as for ComfyUI.

ComfyUI runs with DynamicVRAM on (its default on CUDA in 0.33) and off
(``--disable-dynamic-vram``), each in a process of its own, since ComfyUI picks its model
patcher once at start-up; every ComfyUI row says which patcher held the MODEL. Releases
without DynamicVRAM (0.3.64) run once. ComfyUI starts as ``python main.py`` does
(``comfy_host.start(comfyui_startup=True)``), so the MODEL is managed as in a real session.

it/s = steps / wall time of one sampling call (CUDA synchronised), median of --repeats
calls after a warm-up call. Peak VRAM: ``torch.cuda.max_memory_allocated`` during the
timed calls; "U-Net + sampling" subtracts what other models (text encoder, VAE) held on
the GPU at the start, so both frameworks are charged the same things.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here: imports included

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed"
NEGATIVE = "blurry, low quality"
SEED = 42
DTYPES = ("fp16", "bf16", "fp32")
TARGETS = {"sd1-small": 1.5, "sd1-tiny": 1.6}  # it/s over the teacher's, ComfyUI, fp16, batch 1
PACK_VS_DIFFUSERS = 1.0
FULL = {"models": "sd1-base,sd1-small,sd1-tiny,sd1-teacher", "dtypes": "fp16,bf16", "batches": "1,4", "size": 512,
        "steps": 20, "warmup_steps": 3, "repeats": 2, "compile_models": "sd1-teacher,sd1-tiny,sd1-small,sd1-base",
        "compile_batches": "1"}
SMOKE = {"models": "sd1-tiny", "dtypes": "fp16,bf16", "batches": "1", "size": 64, "steps": 2, "warmup_steps": 1,
         "repeats": 1, "compile_models": "", "compile_batches": "1"}
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="run on the CPU at a tiny size (defaults: "
                   + ", ".join(f"{k}={v}" for k, v in SMOKE.items()) + ") to check the code path")
    p.add_argument("--models", help=f"layouts, from {', '.join(C.LAYOUTS)} (default: {FULL['models']})")
    p.add_argument("--dtypes", help=f"from {', '.join(DTYPES)} (default: {FULL['dtypes']})")
    p.add_argument("--batches", help=f"images per prompt; CFG doubles the U-Net batch (default: {FULL['batches']})")
    p.add_argument("--size", type=int, help=f"image width and height (default: {FULL['size']})")
    p.add_argument("--steps", type=int, help=f"sampling steps of each timed call (default: {FULL['steps']})")
    p.add_argument("--warmup-steps", type=int,
                   help=f"steps of the untimed first call (default: {FULL['warmup_steps']})")
    p.add_argument("--repeats", type=int, help=f"timed calls per cell, median (default: {FULL['repeats']})")
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale (default: %(default)s)")
    p.add_argument("--frameworks", default="comfyui,diffusers", help="(default: %(default)s)")
    p.add_argument("--compile-models", help="layouts also run through ComfyUI's TorchCompileModel (inductor, fp16), "
                   f"in this order while the budget lasts; '' for none (default: {FULL['compile_models']})")
    p.add_argument("--compile-batches", help=f"batches for the compiled runs (default: {FULL['compile_batches']})")
    p.add_argument("--budget-s", type=float, default=540, help="wall-clock budget for the whole run; work that "
                   "would not fit is skipped and marked so (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bksdm-bench",
                   help="random pipeline folders (~19 GB for the four full layouts), logs, results; on the GPU "
                        "machine /dev/shm/... is fastest (default: %(default)s)")
    p.add_argument("--write-jobs", type=int, default=0, help="pipelines written in parallel (default: 4 on CUDA, "
                                                             "1 with --smoke)")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="also copy the results (markdown + JSON) here (default: $OUT when set)")
    p.add_argument("--comfyui", help=f"ComfyUI checkout (default: {C.DEFAULT_COMFYUI})")
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG", help="extra ComfyUI flag (repeatable)")
    p.add_argument("--dynamic-vram", default="on,off", help="ComfyUI's DynamicVRAM settings to measure, each in its "
                   "own process; ignored on releases without it (default: %(default)s)")
    args = p.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.write_jobs <= 0:
        args.write_jobs = 1 if args.smoke else 4
    return args


log = C.progress("gpu", since=T0)


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - T0)

    def allows(self, estimate: float) -> bool:
        return self.left() >= estimate


class Bench:
    """One process: ComfyUI started in it, then every (model, dtype) through each framework."""

    def __init__(self, args, comfy_path: Path, folders: dict[str, Path]):
        import torch

        self.torch, self.args, self.folders = torch, args, folders
        self.device = "cpu" if args.smoke else "cuda"
        self.cuda = self.device == "cuda"
        from cli import comfy_host

        flags = (["--cpu"] if args.smoke else []) + list(args.comfy_arg)
        self.host = comfy_host.start(comfy_path, flags, comfyui_startup=True)
        import comfy.utils
        import folder_paths

        comfy.utils.PROGRESS_BAR_ENABLED = False  # as diffusers' bar is disabled below
        for root in {str(f.parent) for f in folders.values()}:
            folder_paths.add_model_folder_path("diffusers", root)

    # ----------------------------------------------------------------- helpers
    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def cuda_bytes(self, *modules) -> int:
        return sum(t.nbytes for m in modules for t in [*m.parameters(), *m.buffers()] if t.device.type == "cuda")

    def measure(self, call, unet_module) -> dict:
        """Warm-up call, then --repeats timed calls; it/s and peak VRAM."""
        args, torch = self.args, self.torch
        warm_s, _ = self.timed(lambda: call(args.warmup_steps))
        times, out = [], None
        if self.cuda:
            base = torch.cuda.memory_allocated() - self.cuda_bytes(unet_module)
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.repeats):
            seconds, out = self.timed(lambda: call(args.steps))
            times.append(seconds)
        row = {"seconds": C.median(times), "seconds_all": times, "its": args.steps / C.median(times),
               "warmup_s": warm_s, "finite": bool(torch.isfinite(out.float()).all().item())}
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            row.update(peak_vram=peak, sampling_peak_vram=peak - base)
        return row

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # ----------------------------------------------------------------- ComfyUI
    def comfyui(self, layout: C.Layout, dtype: str, batches: list[int], compile_: bool = False) -> list[dict]:
        import comfy.model_management

        import nodes

        torch, args = self.torch, self.args
        rows = []
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            loader = self.host.nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"]
            load_s, (model, clip, _vae) = self.timed(lambda: loader.execute(
                model_name=self.folders[layout.name].name, weight_dtype=dtype, prediction="auto").args)
            positive = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
            negative = nodes.CLIPTextEncode().encode(clip, NEGATIVE)[0]
            framework = "ComfyUI"
            if compile_:
                compiler = self.host.nodes.NODE_CLASS_MAPPINGS["TorchCompileModel"]
                model = compiler.execute(model=model, backend="inductor").args[0]
                framework = "ComfyUI+compile"
            for batch in batches:
                latent = nodes.EmptyLatentImage().generate(args.size, args.size, batch)[0]

                def call(steps, latent=latent, model=model, positive=positive, negative=negative):
                    return nodes.common_ksampler(model, SEED, steps, args.cfg, "euler", "normal", positive, negative,
                                                 latent)[0]["samples"]

                row = {"model": layout.name, "dtype": dtype, "batch": batch, "framework": framework,
                       "load_s": load_s, "attention": C.model_attention(model),
                       "dynamic_vram": self.args.dynamic_vram, "patcher": type(model).__name__}
                try:
                    row.update(self.measure(call, model.model.diffusion_model))
                except Exception as e:  # a compile failure is a result, not the end of the run
                    if not compile_:
                        raise
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    log(f"  TorchCompileModel failed: {row['error']}")
                rows.append(row)
                log(f"  {framework} {layout.name} {dtype} batch {batch}: " + (
                    f"{row['its']:.2f} it/s (warm-up call {row['warmup_s']:.1f} s)" if "its" in row else "failed"))
                if "error" in row:
                    break
        del model, clip, _vae, positive, negative
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        if compile_:
            torch._dynamo.reset()
        self.free()
        return rows

    # ----------------------------------------------------------------- diffusers
    def diffusers(self, layout: C.Layout, dtype: str, batches: list[int]) -> list[dict]:
        torch, args = self.torch, self.args
        import diffusers.utils.logging
        import transformers.utils.logging
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        kwargs = {"variant": "fp16"} if dtype == "fp16" else {}  # the files the pack reads for each dtype

        def load():
            pipe = StableDiffusionPipeline.from_pretrained(str(self.folders[layout.name]), safety_checker=None,
                                                           requires_safety_checker=False,
                                                           **C.diffusers_dtype(torch_dtype), **kwargs)
            return pipe.to(self.device)

        load_s, pipe = self.timed(load)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            prompt_embeds, negative_embeds = pipe.encode_prompt(PROMPT, self.device, 1, True, NEGATIVE)
        processors = ",".join(sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()}))
        rows = []
        for batch in batches:
            def call(steps, batch=batch, pipe=pipe, prompt_embeds=prompt_embeds, negative_embeds=negative_embeds):
                return pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                            num_inference_steps=steps, guidance_scale=args.cfg, height=args.size, width=args.size,
                            num_images_per_prompt=batch, output_type="latent",
                            generator=torch.Generator("cpu").manual_seed(SEED)).images

            row = {"model": layout.name, "dtype": dtype, "batch": batch, "framework": "diffusers", "load_s": load_s,
                   "attention": processors}
            row.update(self.measure(call, pipe.unet))
            rows.append(row)
            log(f"  diffusers {layout.name} {dtype} batch {batch}: {row['its']:.2f} it/s "
                f"(warm-up call {row['warmup_s']:.1f} s)")
        del pipe, prompt_embeds, negative_embeds
        self.free()
        return rows


# --------------------------------------------------------------------------- report

def report(rows: list[dict], skipped: list[str], args) -> str:
    def find(model, dtype, batch, framework, dynamic_vram=None):
        return next((r for r in rows if (r["model"], r["dtype"], r["batch"], r["framework"]) ==
                     (model, dtype, batch, framework) and r.get("dynamic_vram") == dynamic_vram and "its" in r), None)

    table_rows = []
    for r in rows:
        setting = r.get("dynamic_vram")
        teacher = find("sd1-teacher", r["dtype"], r["batch"], r["framework"], setting)
        diff = find(r["model"], r["dtype"], r["batch"], "diffusers")
        off = find(r["model"], r["dtype"], r["batch"], r["framework"], "off") if setting == "on" else None
        its = r.get("its")
        table_rows.append([
            r["model"], r["dtype"], r["batch"], r["framework"],
            f"{setting} ({r['patcher']})" if setting else None, its, r.get("seconds"),
            r.get("peak_vram") and r["peak_vram"] / MIB, r.get("sampling_peak_vram") and r["sampling_peak_vram"] / MIB,
            C.ratio(its, teacher and teacher["its"]) if r["model"] != "sd1-teacher" else None,
            C.ratio(its, diff and diff["its"]) if r["framework"] != "diffusers" else None,
            C.ratio(its, off and off["its"]), r.get("load_s"), r.get("warmup_s"), r.get("finite"),
            r.get("error") or r.get("attention")])
    out = C.table(["model", "dtype", "batch", "framework", "DynamicVRAM (patcher)", "it/s", "s/call", "peak VRAM MiB",
                   "U-Net+sampling peak MiB", "x teacher it/s", "x diffusers it/s", "x DynamicVRAM off it/s",
                   "load s", "warm-up s", "finite", "attention / note"], table_rows)
    settings = sorted({r["dynamic_vram"] for r in rows if r.get("dynamic_vram")}, reverse=True)
    targets = []
    for setting in settings:
        for model, target in TARGETS.items():
            r, t = (find(m, "fp16", 1, "ComfyUI", setting) for m in (model, "sd1-teacher"))
            value = C.ratio(r and r["its"], t and t["its"])
            targets.append([f"{model} it/s over the teacher's (ComfyUI, DynamicVRAM {setting}, fp16, batch 1, CFG)",
                            value, C.verdict(value, target, True)])
    for r in rows:
        if r["framework"] == "ComfyUI" and "its" in r:
            d = find(r["model"], r["dtype"], r["batch"], "diffusers")
            value = C.ratio(r["its"], d and d["its"])
            targets.append([f"pack in ComfyUI (DynamicVRAM {r['dynamic_vram']}) over diffusers, {r['model']} "
                            f"{r['dtype']} batch {r['batch']}", value, C.verdict(value, PACK_VS_DIFFUSERS, True)])
    out += "\n### Targets\n\n" + C.table(["target", "ratio", "verdict"], targets)
    if args.smoke:
        out += "\n(--smoke: CPU at a tiny size; these numbers check the code path and mean nothing for a GPU.)\n"
    if skipped:
        out += "\nskipped: " + "; ".join(skipped) + "\n"
    return out


def gpu_description(torch) -> dict[str, str]:
    if not torch.cuda.is_available():
        return {"GPU": "none (CPU smoke run)"}
    props = torch.cuda.get_device_properties(0)
    info = {"GPU": f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, "
                   f"{props.multi_processor_count} SMs; CUDA {torch.version.cuda}, "
                   f"cuDNN {torch.backends.cudnn.version()}"}
    try:
        import subprocess

        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        if driver:
            info["driver, max SM clock, power limit"] = driver
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def dynamic_vram_settings(args, comfy_path: Path) -> list[str]:
    """The settings to measure: those asked for, where this ComfyUI has DynamicVRAM at all."""
    has_it = "--disable-dynamic-vram" in (comfy_path / "comfy" / "cli_args.py").read_text()
    return C.csv_list(args.dynamic_vram, ("on", "off")) if has_it else ["n/a"]


def measure(args, comfy: Path, folders: dict[str, Path]) -> dict:
    """Every (model, dtype) through each framework, in this process, under one DynamicVRAM setting."""
    import torch

    budget = Budget(args.budget_s)
    layouts = C.layout_list(args.models)
    dtypes = C.csv_list(args.dtypes, DTYPES)
    batches = [int(b) for b in C.csv_list(args.batches)]
    frameworks = C.csv_list(args.frameworks, ("comfyui", "diffusers"))
    compile_layouts = C.layout_list(args.compile_models) if args.compile_models else []
    compile_batches = [int(b) for b in C.csv_list(args.compile_batches)]
    log(f"starting ComfyUI in-process (DynamicVRAM {args.dynamic_vram})")
    bench = Bench(args, comfy, folders)
    header = C.machine_header(
        "BK-SDM sampling benchmark (GPU)" if not args.smoke else "BK-SDM sampling benchmark (--smoke, CPU)", comfy,
        {**gpu_description(torch),
         "settings": f"{args.size}x{args.size}, euler / normal (ComfyUI) and EulerDiscreteScheduler (diffusers), "
                     f"{args.steps} steps per timed call, CFG {args.cfg}, {args.warmup_steps}-step warm-up call, "
                     f"median of {args.repeats} call(s); budget {args.budget_s:.0f} s per DynamicVRAM setting; "
                     f"ComfyUI flags {' '.join((['--cpu'] if args.smoke else []) + args.comfy_arg) or '(none)'}"})

    rows, skipped = [], []
    estimate = 30.0  # seconds for one (model, dtype) through both frameworks; updated as runs finish
    for dtype in dtypes:  # fp16 first: the targets are measured there
        for lay in layouts:
            if not budget.allows(estimate):
                skipped.append(f"{lay.name} {dtype} (time budget, DynamicVRAM {args.dynamic_vram})")
                continue
            start = time.monotonic()
            log(f"{lay.name} {dtype}")
            if "comfyui" in frameworks:
                rows += bench.comfyui(lay, dtype, batches)
            if "diffusers" in frameworks:
                rows += bench.diffusers(lay, dtype, batches)
            estimate = max(estimate, 1.2 * (time.monotonic() - start))
    compile_estimate = 150.0
    for lay in compile_layouts:
        if not budget.allows(compile_estimate):
            skipped.append(f"{lay.name} TorchCompileModel (time budget: {budget.left():.0f} s left, a compile takes "
                           f"~{compile_estimate:.0f} s)")
            continue
        start = time.monotonic()
        log(f"{lay.name} fp16 through TorchCompileModel")
        compiled = bench.comfyui(lay, "fp16", compile_batches, compile_=True)
        rows += compiled
        if any("error" in r for r in compiled):
            skipped += [f"{other.name} TorchCompileModel (it failed on {lay.name})"
                        for other in compile_layouts[compile_layouts.index(lay) + 1:]]
            break
        compile_estimate = max(compile_estimate * 0.5, 1.2 * (time.monotonic() - start))
    return {"header": header, "rows": rows, "skipped": skipped}


def worker(spec: dict) -> dict:
    args = parse_args([])
    vars(args).update(spec["args"])
    return measure(args, Path(spec["comfyui"]), {name: Path(path) for name, path in spec["folders"].items()})


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.stderr.write(f"benchmarks/gpu.py needs a CUDA GPU and torch {torch.__version__} sees none "
                         f"(CUDA build: {torch.version.cuda or 'no'}). Run it on a GPU machine, or with --smoke to "
                         "check the code path on the CPU at a tiny size.\n")
        return 2
    comfy = C.comfyui_path(args.comfyui)
    workdir = args.workdir.resolve()
    layouts = C.layout_list(args.models) + (C.layout_list(args.compile_models) if args.compile_models else [])
    needed = {lay.name: lay for lay in layouts}
    log(f"pipelines: {', '.join(needed)} under {workdir}")
    with ThreadPoolExecutor(max_workers=args.write_jobs) as pool:
        folders = dict(zip(needed, pool.map(lambda lay: C.ensure_pipeline(workdir, lay, comfy, log), needed.values()),
                           strict=True))

    settings = dynamic_vram_settings(args, comfy)
    share = max(60.0, (args.budget_s - (time.monotonic() - T0)) / len(settings))
    rows, skipped, header = [], [], ""
    for n, setting in enumerate(settings):
        # diffusers knows no DynamicVRAM: measured once, beside the first setting.
        frameworks = args.frameworks if n == 0 else ",".join(f for f in C.csv_list(args.frameworks) if f != "diffusers")
        if not frameworks:
            continue
        child = {**vars(args), "workdir": str(workdir), "out": None, "dynamic_vram": setting,
                 "frameworks": frameworks, "budget_s": share,
                 "comfy_arg": [*args.comfy_arg, *(["--disable-dynamic-vram"] if setting == "off" else [])]}
        spec = {"action": "measure", "args": child, "comfyui": str(comfy),
                "folders": {name: str(path) for name, path in folders.items()}}
        log(f"DynamicVRAM {setting}: a ComfyUI process of its own (log: {workdir}/logs/gpu-{setting}.log)")
        result = C.run_worker(Path(__file__), spec, workdir / "logs" / f"gpu-{setting}.log", timeout=share + 300)
        rows += result["rows"]
        skipped += result["skipped"]
        header = header or result["header"]

    text = header + "\n" + report(rows, skipped, args) + f"\ntotal wall time {time.monotonic() - T0:.0f} s\n"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = workdir / "results" / f"gpu-{stamp}.json"
    C.save_json(results, {"header": header, "rows": rows, "skipped": skipped, "args": vars(args)})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-results.md").write_text(text)
        C.save_json(args.out / "gpu-results.json", {"header": header, "rows": rows, "skipped": skipped})
    C.write_stdout(text + f"raw results: {results}\n")
    return 0


if __name__ == "__main__":
    if C.is_worker():
        C.worker_main({"measure": worker})
    else:
        sys.exit(main())
