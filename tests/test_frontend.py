"""The pack in the real ComfyUI front end: its nodes in the node library, every example
workflow loading with no missing node, the help pages and templates served.

Drives headless Chromium (installed by scripts/env.sh) with Playwright against a ComfyUI
server on loopback. Screenshots are kept in test-artifacts/ (or $BKSDM_TEST_ARTIFACTS).
"""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
ARTIFACTS = Path(os.environ.get("BKSDM_TEST_ARTIFACTS", REPO / "test-artifacts"))
PACK_FOLDER = "ComfyUI-BK-SDM"  # the pack's folder name in the test server's custom_nodes
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def page(comfy_server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Chromium: scripts/env.sh installs it with apt-get when run as root")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (tests/requirements.txt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(comfy_server)
        page.wait_for_function("() => window.app && window.app.graph && document.querySelector('canvas')",
                               timeout=120_000)
        page.wait_for_timeout(1500)
        page.keyboard.press("Escape")  # the first-run template browser
        yield page
        browser.close()


def _pack_nodes(comfy_server) -> dict:
    info = json.loads(urllib.request.urlopen(f"{comfy_server}/object_info", timeout=60).read())
    return {node_id: node for node_id, node in info.items() if node_id.startswith("BKSDM")}


def test_every_node_is_in_the_node_library(page, comfy_server):
    nodes = _pack_nodes(comfy_server)
    assert len(nodes) == 7
    page.locator("button:has-text('Nodes')").first.click()
    search = page.locator("input[placeholder*='Search Nodes']").first
    search.fill("BK-SDM")
    page.wait_for_timeout(1500)
    library = page.locator(".sidebar-content-container").first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "frontend-node-library.png"))
    search.fill("")
    page.locator("button:has-text('Nodes')").first.click()  # close the library again
    for node in nodes.values():
        assert node["display_name"] in library, node["name"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_loads_with_no_missing_node(workflow, page):
    data = json.loads(workflow.read_text())
    page.evaluate("wf => window.app.loadGraphData(wf)", data)
    page.wait_for_timeout(1000)
    loaded = page.evaluate("() => window.app.graph.nodes.map(n => ({type: n.type, missing: n.has_errors === true "
                           "|| n.constructor.name === 'LGraphNode'}))")
    assert sorted(n["type"] for n in loaded) == sorted(n["type"] for n in data["nodes"])
    assert [n["type"] for n in loaded if n["missing"]] == []
    dialogs = page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText)")
    assert not any("Nodes Are Missing" in d for d in dialogs)
    page.screenshot(path=str(ARTIFACTS / f"frontend-{workflow.stem}.png"))


def test_help_pages_and_templates_are_served(comfy_server):
    for node_id in _pack_nodes(comfy_server):
        page = urllib.request.urlopen(f"{comfy_server}/extensions/{PACK_FOLDER}/docs/{node_id}.md", timeout=30)
        assert page.read().decode().startswith("# ")
    templates = json.loads(urllib.request.urlopen(f"{comfy_server}/api/workflow_templates", timeout=30).read())
    assert sorted(templates[PACK_FOLDER]) == [w.stem for w in WORKFLOWS]
