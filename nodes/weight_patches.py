"""The shapes of whole-tensor weight patches on a ModelPatcher, read from ComfyUI's own formats.

ComfyUI keeps a MODEL's weight patches as ``patches[key] = [(strength, value, strength_model,
offset, function), ...]``, where ``value`` is, by who added it: a list ``[(tensor, convert),
*patches]`` (a model merge: ``get_key_patches``), a 1-tuple ``(tensor,)`` or ``("diff" | "set" |
"model_as_lora", (tensor, ...))`` (a whole tensor or difference: IC-Light, a LoRA file's
``.diff`` keys), or a LoRA-style adapter. These formats are ComfyUI's, not a versioned API:
this module alone reads them (tested on each supported ComfyUI).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

WHOLE_TENSOR_KINDS = ("diff", "set", "model_as_lora")


def whole_tensor(value) -> torch.Tensor | None:
    """The tensor of a patch value that carries a whole weight; None for low-rank and other kinds."""
    if isinstance(value, list) and value and isinstance(value[0], tuple) and value[0]:
        candidate = value[0][0]
    elif isinstance(value, tuple) and len(value) == 1:
        candidate = value[0]
    elif isinstance(value, tuple) and len(value) == 2 and value[0] in WHOLE_TENSOR_KINDS and value[1]:
        candidate = value[1][0]
    else:
        return None
    return candidate if isinstance(candidate, torch.Tensor) else None


def whole_weight_shapes(model) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every whole-tensor patch a ModelPatcher holds for a full weight (no offset)."""
    for key, patches in model.patches.items():
        for patch in patches:
            tensor = whole_tensor(patch[1])
            if tensor is not None and patch[3] is None:
                yield key, tuple(tensor.shape)
