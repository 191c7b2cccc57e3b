"""Move a LoRA trained on the full SD U-Net onto a BK-SDM U-Net.

ComfyUI matches LoRA keys to a model by the model's own block names, so a teacher LoRA
on a BK U-Net puts the delta of the teacher's ``up_blocks.1.attentions.1`` on the
student's ``attentions.1``, which was initialised from the teacher's ``attentions.2``
(and for Tiny every up stage is off by one). Here each U-Net key is renamed from the
teacher module it targets to the student module initialised from it; the deltas of
blocks BK-SDM removed are dropped. Text-encoder keys pass through unchanged.

Every key style ComfyUI's LoRA loader accepts for an SD U-Net is recognised (kohya
``lora_unet_*`` with diffusers or LDM names, ``lycoris_*``, diffusers ``unet.*`` with or
without attention ``processor``, ComfyUI's ``diffusion_model.*``); renamed keys are
written as ``diffusion_model.<student LDM module><rest of the key>``, which ComfyUI
accepts for any model. The students were trained further after initialisation, so a
transferred LoRA approximates, not reproduces, its effect on the teacher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

from .block_map import require_known_layout, teacher_tensor_homes
from .unet_spec import UNetSpec

log = logging.getLogger(__name__)

OUTPUT_PREFIX = "diffusion_model."
UNET_PREFIXES = ("lora_unet_", "lycoris_", "diffusion_model.", "unet.")


def _processor_name(diffusers_module: str) -> str:
    """Attention names of diffusers' old attention-processor LoRAs ('attn1.processor.to_q')."""
    name = diffusers_module.replace(".to_", ".processor.to_")
    return name[:-2] if name.endswith(".to_out.0") else name


def _identifiers(diffusers_module: str, ldm_module: str) -> list[str]:
    kohya_d, kohya_l = diffusers_module.replace(".", "_"), ldm_module.replace(".", "_")
    processor = _processor_name(diffusers_module)
    return [f"lora_unet_{kohya_l}", f"lora_unet_{kohya_d}", f"lycoris_{kohya_d}", f"diffusion_model.{ldm_module}",
            f"unet.{diffusers_module}", diffusers_module, f"unet.{processor}", processor]


@cache
def _teacher_modules(student: UNetSpec) -> dict[str, str | None]:
    """Every name a LoRA may use for a teacher module -> the student's LDM module, or None if removed."""
    table: dict[str, str | None] = {}
    for tensor, home in teacher_tensor_homes(student):
        d_module, l_module = tensor.diffusers.rsplit(".", 1)[0], tensor.ldm.rsplit(".", 1)[0]
        module = None if home is None else home.rsplit(".", 1)[0]
        for name in _identifiers(d_module, l_module):
            table[name] = module
    return table


def _match(key: str, table: Mapping[str, str | None]) -> tuple[str, str] | None:
    """The longest module identifier that starts ``key`` at a '.' or '_' boundary, and the rest."""
    for end in range(len(key) - 1, 0, -1):
        if key[end] in "._" and key[:end] in table:
            return key[:end], key[end:]
    return None


@dataclass
class TransferReport:
    layout: str
    mapped: set[str] = field(default_factory=set)  # teacher module identifiers moved to the student
    dropped: set[str] = field(default_factory=set)  # teacher modules whose blocks BK-SDM removed
    unmatched: set[str] = field(default_factory=set)  # U-Net-looking keys that name no teacher module

    def summary(self) -> str:
        text = (f"LoRA transfer to BK-SDM ({self.layout}): {len(self.mapped)} U-Net modules mapped, "
                f"{len(self.dropped)} dropped (their blocks were removed)")
        if self.unmatched:
            text += (f"; {len(self.unmatched)} U-Net keys match no SD U-Net module and pass through "
                     "(a LoRA trained on BK-SDM itself belongs in the stock Load LoRA node)")
        return text


def transfer_lora(lora: Mapping, student: UNetSpec, source=None) -> tuple[dict, TransferReport]:
    """Rename a teacher LoRA for ``student``. Tensors are not copied."""
    report = TransferReport(require_known_layout(student, source, "lora"))  # before anything else uses the map
    table = _teacher_modules(student)
    out = {}
    for key, value in lora.items():
        found = _match(key, table)
        if found is None:
            if key.startswith(UNET_PREFIXES):
                report.unmatched.add(key)
            out[key] = value
            continue
        identifier, rest = found
        student_module = table[identifier]
        if student_module is None:
            report.dropped.add(identifier)
        else:
            report.mapped.add(identifier)
            out[f"{OUTPUT_PREFIX}{student_module}{rest}"] = value
    log.info("BK-SDM: %s", report.summary())
    return out, report
