"""ComfyUI node layer: thin V3 nodes over the ``bksdm`` core.

``build`` needs only ComfyUI's model code; ``assemble``, ``loaders`` and ``extension`` need the
host (``folder_paths``, ``comfy_api``), so nothing is imported here.
"""
