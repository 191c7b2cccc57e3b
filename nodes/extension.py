"""The pack's ComfyUI extension: the list of its nodes."""

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .loaders import NODES as LOADER_NODES


class BKSDMExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(LOADER_NODES)


async def comfy_entrypoint() -> BKSDMExtension:
    return BKSDMExtension()
