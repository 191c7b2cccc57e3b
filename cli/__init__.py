"""Command-line tools that drive ComfyUI with this pack: the main job (txt2img) and friends."""
