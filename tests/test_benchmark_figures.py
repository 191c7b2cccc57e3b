"""The figures the README quotes are the current ones: every ratio, time, memory and PSNR
figure in the README's user-facing sections appears, as written, in BENCHMARKS.md (a
figure rounded, or left from an older run, fails here). The Development section's figures
(the test suite's own time and disk) are measured by CI, not by the benchmarks."""

import re
from pathlib import Path

import pytest

# Text of the repository's own files, the same on every ComfyUI release (.ci/run runs it once).
pytestmark = pytest.mark.newest_comfyui
REPO = Path(__file__).resolve().parents[1]
NUMBER = r"\d+(?:\.\d+)?"
FIGURE = re.compile(rf"{NUMBER}x(?: to {NUMBER}x)?|{NUMBER} (?:to {NUMBER} )?(?:dB|GB|MB|s)\b")


def prose(path: Path) -> str:
    return re.sub(r"\s+", " ", path.read_text())


def quoted_figures() -> list[str]:
    readme = prose(REPO / "README.md")
    user_facing = readme.split("## Development")[0]
    return FIGURE.findall(user_facing)


def test_the_readme_quotes_benchmark_figures():
    figures = quoted_figures()
    assert len(figures) >= 20 and "0.26x to 0.31x" in figures  # the pattern still finds the quotes


def test_every_figure_the_readme_quotes_is_in_the_benchmarks_as_written():
    benchmarks = prose(REPO / "BENCHMARKS.md")
    assert [f for f in quoted_figures() if f not in benchmarks] == []
