"""The pack in the real ComfyUI front end (the one each ComfyUI release pins): its nodes in
the node library, every example workflow loading with no missing node, with its Note and
its model files in the front end's list of missing models (with their downloads), the
templates with their cards in the template browser, the help pages served.

Drives the system's headless Chromium with Playwright against a ComfyUI
server on loopback. Screenshots are kept in test-artifacts/ (or $BKSDM_TEST_ARTIFACTS).
"""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright import sync_api

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
ARTIFACTS = Path(os.environ.get("BKSDM_TEST_ARTIFACTS", REPO / "test-artifacts"))
PACK_FOLDER = "ComfyUI-BK-SDM"  # the pack's folder name in the test server's custom_nodes
THUMBNAIL = 512  # px, the square <workflow>.jpg the template browser shows
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def page(comfy_server):
    chromium = os.environ.get("BKSDM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("the front-end test needs Chromium and found none (BKSDM_CHROMIUM, or chromium or "
                    "chromium-browser on PATH): install it from your system's packages (Debian and Ubuntu: "
                    "apt-get install chromium), or point BKSDM_CHROMIUM at a Chromium or Chrome binary")
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
    assert len(nodes) == 8
    page.locator("button:has-text('Nodes')").first.click()
    search = page.locator("input[placeholder*='Search']").first  # "Search Nodes..." (1.27), "Search..." (1.4x)
    search.fill("BK-SDM")
    shown = {}
    for node in nodes.values():
        entry = page.get_by_text(node["display_name"], exact=True).first
        try:
            entry.wait_for(state="visible", timeout=20_000)
        except sync_api.TimeoutError:
            pass
        shown[node["display_name"]] = entry.is_visible()
    page.screenshot(path=str(ARTIFACTS / "frontend-node-library.png"))
    search.fill("")
    page.locator("button:has-text('Nodes')").first.click()  # close the library again
    assert shown == dict.fromkeys(shown, True)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_loads_with_no_missing_node(workflow, page):
    data = json.loads(workflow.read_text())
    page.evaluate("wf => window.app.loadGraphData(wf)", data)
    page.wait_for_timeout(1000)
    loaded = page.evaluate("() => window.app.graph.nodes.map(n => ({type: n.type, "
                           "missing: !window.LiteGraph.registered_node_types[n.type]}))")
    assert sorted(n["type"] for n in loaded) == sorted(n["type"] for n in data["nodes"])
    assert [n["type"] for n in loaded if n["missing"]] == []  # the Note (MarkdownNote) is the front end's own
    # What the front end offers for missing files: each node's properties.models, as saved.
    models = page.evaluate("() => Object.fromEntries(window.app.graph.nodes"
                           ".map(n => [n.id, n.properties.models || []]))")
    assert {int(k): v for k, v in models.items() if v} == {
        n["id"]: n["properties"]["models"] for n in data["nodes"] if n.get("properties", {}).get("models")}
    note = page.evaluate("() => window.app.graph.nodes.filter(n => n.type === 'MarkdownNote')"
                         ".map(n => n.widgets[0].value)")
    assert note == [n["widgets_values"][0] for n in data["nodes"] if n["type"] == "MarkdownNote"]
    files = [m["name"] for n in data["nodes"] for m in n.get("properties", {}).get("models", [])]
    if files:  # none of them is on the test server: the front end lists each one as missing
        shown = missing_models_shown(page, files)
        assert [name for name in files if name not in shown] == [], shown
    page.screenshot(path=str(ARTIFACTS / f"frontend-{workflow.stem}.png"))
    page.keyboard.press("Escape")


def missing_models_shown(page, files: list[str]) -> str:
    """The text of the front end's list of missing models once it names ``files`` (or after 30 s):
    a Missing Models dialog in the 1.2x front end (ComfyUI 0.3.64), the errors panel behind the
    "View details" notice in the 1.4x one (0.33)."""
    listed = ("files => { const dialog = document.querySelector('.comfy-missing-models');"
              " const text = dialog ? dialog.innerText : (document.body.innerText.split('Missing Models')[1] || '');"
              " return files.every(f => text.includes(f)); }")
    try:
        page.wait_for_function(f"files => ({listed})(files) || document.body.innerText.includes('View details')",
                               arg=files, timeout=30_000)
        if not page.evaluate(listed, files):
            page.get_by_text("View details").first.click()
            page.wait_for_function(listed, arg=files, timeout=30_000)
    except sync_api.TimeoutError:
        pass  # the caller's assertion says what was shown
    dialog = page.locator(".comfy-missing-models")
    return dialog.first.inner_text() if dialog.count() else page.evaluate(
        "() => document.body.innerText.split('Missing Models')[1] || ''")


def test_templates_show_with_their_thumbnails(page, comfy_server):
    for workflow in WORKFLOWS:
        thumbnail = Image.open(workflow.with_suffix(".jpg"))
        assert thumbnail.format == "JPEG" and thumbnail.size == (THUMBNAIL, THUMBNAIL)
        darkest, brightest = thumbnail.convert("L").getextrema()
        assert brightest - darkest > 100  # a picture, not a blank
    page.keyboard.press("Escape")
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".p-dialog, [role=dialog]").last
    dialog.get_by_text(PACK_FOLDER, exact=True).first.click(timeout=30_000)
    # Each card's picture once loaded (cards load them when in view: each is searched for, so it shows
    # first); the front end's placeholder is 224 px wide.
    picture = ("name => { const i = Array.from(document.querySelectorAll('.p-dialog img, [role=dialog] img'))"
               ".find(i => i.alt === name); return i && i.complete ? i.naturalWidth : 0; }")
    search = dialog.locator("input[placeholder*='Search']").first
    shown = {}
    for workflow in WORKFLOWS:
        search.fill(workflow.stem)
        try:
            page.wait_for_function(f"name => ({picture})(name) === {THUMBNAIL}", arg=workflow.stem, timeout=20_000)
        except sync_api.TimeoutError:
            pass  # the assertion below says what was shown
        shown[workflow.stem] = page.evaluate(picture, workflow.stem)
    search.fill("")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "frontend-templates.png"))
    page.keyboard.press("Escape")
    assert shown == {w.stem: THUMBNAIL for w in WORKFLOWS}, shown


def test_help_pages_and_templates_are_served(comfy_server):
    for node_id in _pack_nodes(comfy_server):
        page = urllib.request.urlopen(f"{comfy_server}/extensions/{PACK_FOLDER}/docs/{node_id}.md", timeout=30)
        assert page.read().decode().startswith("# ")
    templates = json.loads(urllib.request.urlopen(f"{comfy_server}/api/workflow_templates", timeout=30).read())
    assert sorted(templates[PACK_FOLDER]) == [w.stem for w in WORKFLOWS]
