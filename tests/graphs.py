"""API-format prompts for the integration tests: a txt2img graph with room for model patches."""

from __future__ import annotations

import numpy as np


def txt2img(loader: dict, *, size: int = 64, steps: int = 2, seed: int = 1, text: str = "a house",
            patches: list[tuple[str, dict]] = (), prefix: str = "test") -> dict:
    """loader -> [patch nodes on MODEL] -> KSampler -> VAEDecode -> SaveImage.

    ``loader`` is the node that gives MODEL, CLIP and VAE on outputs 0, 1, 2 (id "load").
    Each patch is (class_type, inputs); it gets the previous MODEL as its "model" input.
    """
    prompt = {
        "load": loader,
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["load", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["load", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["load", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    model = ["load", 0]
    for n, (class_type, inputs) in enumerate(patches):
        prompt[f"patch{n}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"patch{n}", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}
    return prompt


def pipeline_loader(model_name: str) -> dict:
    return {"class_type": "BKSDMPipelineLoader",
            "inputs": {"model_name": model_name, "weight_dtype": "fp32", "prediction": "auto"}}


def release_memory(host) -> None:
    """Drop ComfyUI's cached node outputs and loaded models, and hand the freed heap back to the
    system (glibc keeps it otherwise, and RSS only grows)."""
    import ctypes
    import ctypes.util
    import gc

    import comfy.model_management

    host.executor.reset()
    comfy.model_management.unload_all_models()
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)


def saved_image(outputs: dict, node: str = "save") -> np.ndarray:
    import folder_paths
    from PIL import Image

    image = outputs[node]["images"][0]
    path = f"{folder_paths.get_output_directory()}/{image['subfolder']}/{image['filename']}"
    return np.asarray(Image.open(path)).astype(int)
