"""Draw each example workflow's template-browser card from the workflow itself.

    python scripts/template_cards.py           # writes example_workflows/<workflow>.jpg
    python scripts/template_cards.py --check   # exit 1 if a card differs from what the workflow draws

No picture of a real output can be made here (no real weights), so the card says what the
template is: its title (the heading of its Note), the BK-SDM model and family it loads and
the nodes that matter, large enough to read at the size the template browser shows it.
Drawn from the workflow files, the cards never describe an older version of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for cli
from cli.workflow import NOTES

WORKFLOWS = Path(__file__).resolve().parents[1] / "example_workflows"
SIZE = 512  # px, the square the template browser shows
QUALITY = 90
BACKGROUND, PANEL, ACCENT, TEXT, MUTED_TEXT = "#17181f", "#262834", "#f2b84b", "#f4f4f6", "#a9abb8"

# Node types every template has, and the preparation of its input picture: the card names the others.
PLUMBING = {"CLIPTextEncode", "EmptyLatentImage", "VAEDecode", "SaveImage", "SaveAnimatedWEBP", "LoadImage", "Canny",
            *NOTES}
MODEL_LOADERS = ("BKSDMPipelineLoader", "BKSDMUNetLoader")  # their first widget names the BK-SDM model
# The names the node library shows, the same in every supported ComfyUI (tests/test_workflows.py
# checks them against the running one).
DISPLAY_NAMES = {
    "BKSDMPipelineLoader": "Load BK-SDM Pipeline",
    "BKSDMUNetLoader": "Load BK-SDM U-Net",
    "BKSDMLoraLoader": "Load SD LoRA onto BK-SDM",
    "CLIPLoader": "Load CLIP",
    "VAELoader": "Load VAE",
    "KSampler": "KSampler",
    "ControlNetLoader": "Load ControlNet Model",
    "ControlNetApplyAdvanced": "Apply ControlNet",
    "IPAdapterModelLoader": "IPAdapter Model Loader",
    "CLIPVisionLoader": "Load CLIP Vision",
    "IPAdapterAdvanced": "IPAdapter Advanced",
    "ADE_LoadAnimateDiffModel": "Load AnimateDiff Model 🎭🅐🅓②",
    "ADE_ApplyAnimateDiffModelSimple": "Apply AnimateDiff Model 🎭🅐🅓②",
    "ADE_StandardUniformContextOptions": "Context Options◆Standard Uniform 🎭🅐🅓",
    "ADE_UseEvolvedSampling": "Use Evolved Sampling 🎭🅐🅓②",
}
# Symbols some packs put in their names (AnimateDiff-Evolved's emoji, ◆): the card's font has none.
SYMBOLS = re.compile(r"\s*[^\x00-\u1fff]+\s*")


log = logging.getLogger("template_cards")


class CardError(ValueError):
    pass


def note_heading(workflow: dict, path: Path) -> str:
    for node in workflow["nodes"]:
        if node["type"] == "MarkdownNote":
            first = node["widgets_values"][0].splitlines()[0]
            if first.startswith("## "):
                return first[3:]
    raise CardError(f"{path}: expected a MarkdownNote whose text starts with '## <title>'; found none. "
                    "Add the note: its heading is the card's title.")


def model_label(workflow: dict) -> str:
    """The BK-SDM model the template loads and its family (BK-SDM's SD-2 variants are named v2)."""
    loader = next(n for n in workflow["nodes"] if n["type"] in MODEL_LOADERS)
    model = loader["widgets_values"][0]
    return f"{model} · {'SD 2.x' if 'v2' in model else 'SD 1.x'}"


def key_nodes(workflow: dict, path: Path) -> list[str]:
    """The node types that are not plumbing, each once, in the workflow's execution order with the
    sampler last: what is loaded and patched, then what samples."""
    names = []
    for node in sorted(workflow["nodes"], key=lambda n: (n["type"] == "KSampler", n.get("order", 0))):
        kind = node["type"]
        if kind in PLUMBING:
            continue
        if kind not in DISPLAY_NAMES:
            raise CardError(f"{path}: node type {kind} has no card name; expected one of {sorted(DISPLAY_NAMES)}. "
                            "Add its display name to DISPLAY_NAMES in scripts/template_cards.py.")
        if DISPLAY_NAMES[kind] not in names:
            names.append(DISPLAY_NAMES[kind])
    return names


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    # Pillow's own font (Aileron), so every machine draws the same card.
    return ImageFont.load_default(size=size + (2 if bold else 0))


def draw_card(workflow: dict, path: Path) -> Image.Image:
    title = note_heading(workflow, path).removeprefix("BK-SDM ")
    card = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(card)
    draw.rectangle((0, 0, SIZE, 10), fill=ACCENT)
    draw.text((32, 36), "BK-SDM", font=font(44, bold=True), fill=ACCENT)
    draw.text((SIZE - 32, 50), model_label(workflow), font=font(24), fill=MUTED_TEXT, anchor="ra")
    y = 112
    for line in textwrap.wrap(title[:1].upper() + title[1:], width=22)[:3]:
        draw.text((32, y), line, font=font(38, bold=True), fill=TEXT)
        y += 48
    y += 16
    for name in key_nodes(workflow, path):
        if y + 44 > SIZE - 16:  # as many as the card holds, the first ones first
            break
        draw.rounded_rectangle((32, y, SIZE - 32, y + 44), radius=10, fill=PANEL)
        draw.rectangle((32, y + 8, 37, y + 36), fill=ACCENT)
        draw.text((52, y + 22), SYMBOLS.sub(" ", name).strip(), font=font(24), fill=TEXT, anchor="lm")
        y += 54
    return card


def card_path(workflow_path: Path) -> Path:
    return workflow_path.with_suffix(".jpg")


def differs(drawn: Image.Image, saved_path: Path) -> bool:
    """Whether the saved card shows something else than the drawn one; JPEG's rounding (and
    another libjpeg's) moves pixels a few levels, a changed word moves many far."""
    if not saved_path.is_file():
        return True
    saved = Image.open(saved_path).convert("L")
    if saved.size != drawn.size:
        return True
    far = sum(ImageChops.difference(saved, drawn.convert("L")).histogram()[65:])  # pixels > 64 levels off
    return far > SIZE * SIZE // 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    stale = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        try:
            card = draw_card(json.loads(path.read_text()), path)
        except CardError as e:
            log.error("%s", e)
            return 2
        if args.check:
            if differs(card, card_path(path)):
                stale.append(card_path(path).name)
        else:
            card.save(card_path(path), quality=QUALITY)
    if stale:
        log.error("cards that no longer match their workflow: %s; run python scripts/template_cards.py",
                  ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
