"""BK-SDM for ComfyUI: load block-removed, distilled Stable Diffusion (nota-ai BK-SDM) as
native MODEL, CLIP and VAE.

ComfyUI imports this package and calls ``comfy_entrypoint``. Imported anywhere else (tests,
tools), it defines nothing and needs nothing: the core lives in ``bksdm/``.
"""

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    # ComfyUI imports the pack as a package. pytest imports a checkout whose folder name is no
    # Python identifier (ComfyUI-BK-SDM, as git names the clone) as a bare module, with no package
    # for the relative import: there the pack is a folder of tests, not a node pack.
    if __package__:
        from .nodes.extension import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = "./web"
