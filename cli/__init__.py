"""The pack's commands (txt2img, download, convert) and the headless ComfyUI they drive.

They are modules of the pack's package, run as ``python <pack folder> COMMAND`` (``__main__.py``
imports the package as ComfyUI names it, see ``pack_import.py``), and reach the core and the node
layer by relative imports. ``provision_comfyui`` alone is standard library only and also runs on
its own (``python -m cli.provision_comfyui``), before any environment exists.
"""
