"""What one sampling-benchmark worker process runs (``gpu.py`` on CUDA, ``cpu_txt2img.py`` on
the CPU): ComfyUI started in it, then txt2img sampling of each (model, dtype) through
ComfyUI (the pack's loader and KSampler's own function) and through diffusers, timed (CUDA
synchronised) with the peak VRAM on a GPU or the peak RSS on the CPU, optionally followed by
the VAE decode, within a wall-clock budget. The scripts' docstrings say what is measured
and why."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

from comfy_model import compute_dtype, model_attention, torch_compiled, with_comfyui_attention
from memory import measure_call
from options import csv_list
from output import machine_header, median
from pipelines import Layout, diffusers_dtype, layout_list

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed"
NEGATIVE = "blurry, low quality"
SEED = 42
DTYPES = ("fp16", "bf16", "fp32", "default")  # default: the pack loader's default
DIFFUSERS_DTYPE = {"default": "fp32"}  # what diffusers runs for a dtype that is not its own: its default
# ComfyUI attention settings: the MODEL as the pack's loader gives it, or the same MODEL without
# the pack's CPU attention choice (nodes/cpu.py), i.e. ComfyUI's own default; alike on CUDA.
ATTENTIONS = ("pack", "comfyui")


class Budget:
    """``seconds`` of wall clock, counted from ``start`` (a ``time.monotonic()``)."""

    def __init__(self, seconds: float, start: float):
        self.seconds, self.start = seconds, start

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def allows(self, estimate: float) -> bool:
        return self.left() >= estimate


class Bench:
    """One process: ComfyUI started in it, then every (model, dtype) through each framework."""

    def __init__(self, args, comfy_path: Path, folders: dict[str, Path], log: Callable[[str], None]):
        import torch

        self.torch, self.args, self.folders, self.log = torch, args, folders, log
        self.device = args.device
        self.cuda = self.device == "cuda"
        from cli import comfy_host

        flags = (["--cpu"] if not self.cuda else []) + list(args.comfy_arg)
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

    def measure(self, call, unet_module, decode) -> tuple[dict, object]:
        """Warm-up call, then --repeats timed calls: it/s, and the peak VRAM (CUDA) or the peak RSS
        growth of the first timed call over the RSS before it (CPU); then, with --decode, the
        timed VAE decode of the last call's latent. Returns the row and the decoded images."""
        args, torch = self.args, self.torch
        warm_s, _ = self.timed(lambda: call(args.warmup_steps))
        times, out, row = [], None, {}
        if self.cuda:
            base = torch.cuda.memory_allocated() - self.cuda_bytes(unet_module)
            torch.cuda.reset_peak_memory_stats()
        for n in range(args.repeats):
            if n == 0 and not self.cuda:  # the kernel's exact high-water mark, reset just before the call
                first = measure_call(lambda: call(args.steps))
                seconds, out = first.seconds, first.value
                row["sampling_peak_rss"] = first.peak_increase
            else:
                seconds, out = self.timed(lambda: call(args.steps))
            times.append(seconds)
        row.update({"seconds": median(times), "seconds_all": times, "its": args.steps / median(times),
                    "warmup_s": warm_s, "finite": bool(torch.isfinite(out.float()).all().item())})
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            row.update(peak_vram=peak, sampling_peak_vram=peak - base)
        images = None
        if args.decode:
            row["decode_s"], images = self.timed(lambda: decode(out))
        return row, images

    def save_images(self, images, row: dict) -> None:
        """With --images DIR: the first image of the batch as a PNG named after its cell."""
        if not self.args.images:
            return
        from PIL import Image

        folder = Path(self.args.images)
        folder.mkdir(parents=True, exist_ok=True)
        name = "-".join(str(row[k]) for k in ("model", "dtype", "framework", "attention_setting") if row.get(k))
        pixels = (images[0].float().clamp(0, 1) * 255).round().to(self.torch.uint8).cpu().numpy()
        path = folder / f"{name}-b{row['batch']}.png"
        Image.fromarray(pixels).save(path)
        row["image"] = str(path)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # ----------------------------------------------------------------- ComfyUI
    def comfyui(self, layout: Layout, dtype: str, batches: list[int], attentions: list[str],
                compile_: bool = False) -> list[dict]:
        import comfy.model_management

        nodes = self.host.nodes
        torch, args = self.torch, self.args
        rows = []
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            loader = nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"]
            load_s, (loaded, clip, vae) = self.timed(lambda: loader.execute(
                model_name=self.folders[layout.name].name, weight_dtype=dtype, prediction="auto").args)
            encode_s, (positive, negative) = self.timed(lambda clip=clip: (  # bound now: deleted below
                nodes.CLIPTextEncode().encode(clip, PROMPT)[0], nodes.CLIPTextEncode().encode(clip, NEGATIVE)[0]))

            def decode(samples, vae=vae):
                return nodes.VAEDecode().decode(vae, {"samples": samples})[0]

            if dtype == "bf16" and args.force_bf16_compute and compute_dtype(loaded) != "bfloat16":
                loaded = loaded.clone()  # ComfyUI's per-model setting, as nodes/cpu.py sets it on bf16 CPUs
                loaded.set_model_compute_dtype(torch.bfloat16)
            for attention in attentions:
                model = loaded if attention == "pack" else with_comfyui_attention(loaded)
                framework = "ComfyUI"
                if compile_:
                    model = torch_compiled(model)
                    framework = "ComfyUI+compile"
                for batch in batches:
                    latent = nodes.EmptyLatentImage().generate(args.size, args.size, batch)[0]

                    def call(steps, latent=latent, model=model, positive=positive, negative=negative):
                        return nodes.common_ksampler(model, SEED, steps, args.cfg, "euler", "normal", positive,
                                                     negative, latent)[0]["samples"]

                    row = {"model": layout.name, "dtype": dtype, "batch": batch, "framework": framework,
                           "attention_setting": attention, "load_s": load_s, "attention": model_attention(model),
                           "encode_s": encode_s, "vae_dtype": str(vae.vae_dtype).replace("torch.", ""),
                           "compute_dtype": compute_dtype(model), "dynamic_vram": self.args.dynamic_vram,
                           "patcher": type(model).__name__}
                    try:
                        measured, images = self.measure(call, model.model.diffusion_model, decode)
                        row.update(measured)
                        self.save_images(images, row)
                    except Exception as e:  # a compile failure is a result, not the end of the run
                        if not compile_:
                            raise
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                        self.log(f"  TorchCompileModel failed: {row['error']}")
                    rows.append(row)
                    self.log(f"  {framework} ({attention} attention) {layout.name} {dtype} batch {batch}: " + (
                        f"{row['its']:.2f} it/s (warm-up call {row['warmup_s']:.1f} s)" if "its" in row else "failed"))
                    if "error" in row:
                        break
                del model
        del loaded, clip, vae, positive, negative
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
        if compile_:
            torch._dynamo.reset()
        self.free()
        return rows

    # ----------------------------------------------------------------- diffusers
    def diffusers(self, layout: Layout, dtype: str, batches: list[int]) -> list[dict]:
        torch, args = self.torch, self.args
        import diffusers.utils.logging
        import transformers.utils.logging
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16,
                       "fp32": torch.float32}[DIFFUSERS_DTYPE.get(dtype, dtype)]
        kwargs = {"variant": "fp16"} if dtype == "fp16" else {}  # the files the pack reads for each dtype

        def load():
            pipe = StableDiffusionPipeline.from_pretrained(str(self.folders[layout.name]), safety_checker=None,
                                                           requires_safety_checker=False,
                                                           **diffusers_dtype(torch_dtype), **kwargs)
            return pipe.to(self.device)

        load_s, pipe = self.timed(load)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            encode_s, (prompt_embeds, negative_embeds) = self.timed(
                lambda pipe=pipe: pipe.encode_prompt(PROMPT, self.device, 1, True, NEGATIVE))
        processors = ",".join(sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()}))

        def decode(latents, vae=pipe.vae):  # as the pipeline's own output_type="pil" path, to [0, 1] NHWC
            with torch.no_grad():
                images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
            return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

        rows = []
        for batch in batches:
            def call(steps, batch=batch, pipe=pipe, prompt_embeds=prompt_embeds, negative_embeds=negative_embeds):
                return pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                            num_inference_steps=steps, guidance_scale=args.cfg, height=args.size, width=args.size,
                            num_images_per_prompt=batch, output_type="latent",
                            generator=torch.Generator("cpu").manual_seed(SEED)).images

            row = {"model": layout.name, "dtype": dtype, "batch": batch, "framework": "diffusers", "load_s": load_s,
                   "attention": processors, "compute_dtype": str(pipe.unet.dtype).replace("torch.", ""),
                   "encode_s": encode_s, "vae_dtype": str(pipe.vae.dtype).replace("torch.", "")}
            measured, images = self.measure(call, pipe.unet, decode)
            row.update(measured)
            self.save_images(images, row)
            rows.append(row)
            self.log(f"  diffusers {layout.name} {dtype} batch {batch}: {row['its']:.2f} it/s "
                f"(warm-up call {row['warmup_s']:.1f} s)")
        del pipe, prompt_embeds, negative_embeds
        self.free()
        return rows


def gpu_description(torch) -> dict[str, str]:
    if not torch.cuda.is_available():
        return {"GPU": "none"}
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


def measure(args, comfy: Path, folders: dict[str, Path], budget: Budget, log: Callable[[str], None]) -> dict:
    """Every (model, dtype) through each framework, in this process (on CUDA: under one DynamicVRAM setting)."""
    import torch

    layouts = layout_list(args.models)
    dtypes = csv_list(args.dtypes, DTYPES)
    batches = [int(b) for b in csv_list(args.batches)]
    frameworks = csv_list(args.frameworks, ("comfyui", "diffusers"))
    attentions = csv_list(args.comfy_attention, ATTENTIONS)
    compile_layouts = layout_list(args.compile_models) if args.compile_models else []
    compile_batches = [int(b) for b in csv_list(args.compile_batches)]
    log(f"starting ComfyUI in-process (DynamicVRAM {args.dynamic_vram})")
    bench = Bench(args, comfy, folders, log)
    header = machine_header(
        args.title, comfy,
        {**gpu_description(torch),
         "settings": f"{args.size}x{args.size}, euler / normal (ComfyUI) and EulerDiscreteScheduler (diffusers), "
                     f"{args.steps} steps per timed call, CFG {args.cfg}, {args.warmup_steps}-step warm-up call, "
                     f"median of {args.repeats} call(s)" + (", then the VAE decode" if args.decode else "")
                     + f"; budget {args.budget_s:.0f} s per worker process; ComfyUI flags "
                     + (" ".join((["--cpu"] if args.device == "cpu" else []) + args.comfy_arg) or "(none)")})

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
                rows += bench.comfyui(lay, dtype, batches, attentions)
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
        log(f"{lay.name} {args.compile_dtype} through TorchCompileModel")
        compiled = bench.comfyui(lay, args.compile_dtype, compile_batches, attentions[:1], compile_=True)
        rows += compiled
        if any("error" in r for r in compiled):
            skipped += [f"{other.name} TorchCompileModel (it failed on {lay.name})"
                        for other in compile_layouts[compile_layouts.index(lay) + 1:]]
            break
        compile_estimate = max(compile_estimate * 0.5, 1.2 * (time.monotonic() - start))
    return {"header": header, "rows": rows, "skipped": skipped}
