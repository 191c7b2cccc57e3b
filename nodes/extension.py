"""The pack's ComfyUI extension: the list of its nodes."""

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from . import controlnet, convert, download, loaders, lora, merge


class BKSDMExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*loaders.NODES, *lora.NODES, *controlnet.NODES, *convert.NODES, *download.NODES,
                *merge.NODES]


async def comfy_entrypoint() -> BKSDMExtension:
    return BKSDMExtension()
