"""Bar charts of a benchmark's own results, drawn with Pillow (which ComfyUI already needs):
one bar per series within each group, the value written at the bar's end, so a reader sees
at a glance what the tables say in ratios."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH = 1200
BAR, GAP, MARGIN = 26, 22, 40
COLOURS = ("#3b6fd8", "#f2a93b", "#46a86b", "#c2534f", "#8a63c9", "#5a9fb0", "#9a9a9a", "#d47fb8")
BACKGROUND, TEXT, MUTED_TEXT, RULE = "#ffffff", "#1d1d24", "#5c5f6b", "#e3e4ea"
SWATCH = 28  # a legend entry's colour square and the gap before its name


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's own font: the same chart on every machine


def label(value: float) -> str:
    """Three significant digits, never in exponent form (a 5120 ms step stays 5120)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def legend_places(names: Sequence[str]) -> list[tuple[float, int]]:
    """Where each legend entry starts: its x and its line, entries in reading order, each as wide as its
    name (a long one never runs into the next), wrapping to a new line where the width ends."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    places, x, line = [], MARGIN, 0
    for name in names:
        width = SWATCH + measure.textlength(name, font=font(18)) + 32  # and the space before the next
        if x > MARGIN and x + width > WIDTH - MARGIN:
            x, line = MARGIN, line + 1
        places.append((x, line))
        x += width
    return places


def bar_chart(title: str, unit: str, groups: Sequence[str], series: Sequence[str],
              values: dict[tuple[str, str], float], note: str = "") -> Image.Image:
    """Horizontal bars: for each group (a row label), one bar per series that has a value."""
    shown = [s for s in series if any((g, s) in values for g in groups)]
    rows = [[(s, values[g, s]) for s in shown if (g, s) in values] for g in groups]
    places = legend_places(shown)
    top = MARGIN + 40 + 30 * (max((line for _, line in places), default=0) + 1) + 16
    height = top + sum(len(r) * BAR + GAP for r in rows) + MARGIN + (24 if note else 0)
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN - 8), title, font=font(26), fill=TEXT)
    for name, (x, line) in zip(shown, places, strict=True):
        y = MARGIN + 40 + 30 * line
        draw.rectangle((x, y + 4, x + 18, y + 22), fill=COLOURS[series.index(name) % len(COLOURS)])
        draw.text((x + SWATCH, y + 2), name, font=font(18), fill=TEXT)
    label_width = max(draw.textlength(g, font=font(20)) for g in groups) + 24  # the group names' column
    largest = max((v for r in rows for _, v in r), default=1.0) or 1.0
    scale = (WIDTH - MARGIN * 2 - label_width - 110) / largest
    y = top
    for group, row in zip(groups, rows, strict=True):
        if not row:
            continue
        draw.line((MARGIN, y - GAP // 2, WIDTH - MARGIN, y - GAP // 2), fill=RULE, width=1)
        draw.text((MARGIN, y + len(row) * BAR / 2), group, font=font(20), fill=TEXT, anchor="lm")
        for name, value in row:
            x0 = MARGIN + label_width
            draw.rectangle((x0, y + 3, x0 + max(1, round(value * scale)), y + BAR - 3),
                           fill=COLOURS[series.index(name) % len(COLOURS)])
            draw.text((x0 + value * scale + 8, y + BAR / 2), f"{label(value)} {unit}", font=font(16),
                      fill=MUTED_TEXT, anchor="lm")
            y += BAR
        y += GAP
    if note:
        draw.text((MARGIN, height - MARGIN), note, font=font(15), fill=MUTED_TEXT)
    return image


def stacked(*charts: Image.Image) -> Image.Image:
    """Charts one above the other, in one picture."""
    image = Image.new("RGB", (WIDTH, sum(c.height for c in charts)), BACKGROUND)
    y = 0
    for chart in charts:
        image.paste(chart, (0, y))
        y += chart.height
    return image


def save_chart(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path
