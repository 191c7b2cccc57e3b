"""The example workflows, as the main job reads them: each converts to an API prompt against
the real node definitions, with every required input set and every link pointing at a node.
As a user opens them: every model file they need is listed with its download on its node, and
their Note says what to get; their template cards are drawn from them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from thirdparty import PACKS

from cli.workflow import NOTES, WorkflowError, to_api_prompt

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
# What the front end counts as a model file in a widget (its isModelFileName), of the kinds ComfyUI loads.
MODEL_FILE = re.compile(r"\.(safetensors|sft|ckpt|pt|pth|bin)$")


def load_card_script():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import template_cards
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return template_cards


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_converts_to_a_complete_prompt(workflow, host, thirdparty):
    for name in PACKS:  # the IP-Adapter example uses cubiq's nodes, as its README says
        thirdparty(name)
    prompt = to_api_prompt(json.loads(workflow.read_text()), host.node_info)
    assert any(node["class_type"].startswith("BKSDM") for node in prompt.values())
    assert not {node["class_type"] for node in prompt.values()} & NOTES  # the front end never sends notes
    for node_id, node in prompt.items():
        info = host.node_info(node["class_type"])
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        assert set(node["inputs"]) <= set(declared), node_id
        assert set(info["input"].get("required", {})) <= set(node["inputs"]), node_id
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                assert value[0] in prompt, f"{node_id} links to a node that is not there"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_every_link_is_listed_once_and_at_both_of_its_ends(workflow):
    data = json.loads(workflow.read_text())
    nodes = {node["id"]: node for node in data["nodes"]}
    ids = [link[0] for link in data["links"]]
    assert len(ids) == len(set(ids)) and max(ids) <= data["last_link_id"]
    for link_id, source, slot, target, index, kind in data["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"] and nodes[source]["outputs"][slot]["type"] == kind
        assert nodes[target]["inputs"][index]["link"] == link_id


def test_a_muted_node_is_left_out_and_a_bypassed_one_is_refused(host):
    workflow = json.loads((REPO / "example_workflows" / "bk-sdm-sd1-txt2img.json").read_text())
    save = next(n for n in workflow["nodes"] if n["type"] == "SaveImage")
    save["mode"] = 2
    assert str(save["id"]) not in to_api_prompt(workflow, host.node_info)
    save["mode"] = 4
    with pytest.raises(WorkflowError, match="bypassed"):
        to_api_prompt(workflow, host.node_info)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_every_model_file_is_listed_with_its_download_and_named_in_the_note(workflow, host, thirdparty):
    """The front end offers what a node's properties.models lists (name, url, directory) when the
    file is missing; the Note says the same to a reader, and how to get the BK-SDM model."""
    import folder_paths

    for name in PACKS:  # their model folders (ipadapter) exist once their nodes are loaded
        thirdparty(name)
    data = json.loads(workflow.read_text())
    notes = [n["widgets_values"][0] for n in data["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and notes[0].startswith("## ")
    note = notes[0]
    loader = next(n for n in data["nodes"] if n["type"] in load_card_script().MODEL_LOADERS)
    assert f"**{loader['widgets_values'][0]}**" in note and "Download BK-SDM Model" in note
    for node in data["nodes"]:
        files = [v for v in node.get("widgets_values") or [] if isinstance(v, str) and MODEL_FILE.search(v)]
        listed = node.get("properties", {}).get("models", [])
        assert sorted(m["name"] for m in listed) == sorted(files), node["type"]
        for model in listed:
            assert set(model) == {"name", "url", "directory"}
            assert model["url"].startswith("https://huggingface.co/") and "/resolve/" in model["url"]
            assert model["directory"] in folder_paths.folder_names_and_paths, model
            assert f"**{model['name']}** in `models/{model['directory']}`: [download]({model['url']})" in note


def test_the_template_cards_are_drawn_from_the_workflows_as_they_are():
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "template_cards.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


def test_the_cards_name_the_nodes_as_the_node_library_does(host, thirdparty):
    for name in PACKS:
        thirdparty(name)
    names = load_card_script().DISPLAY_NAMES

    def shown(kind: str) -> str:  # as the server's /object_info names a node (V3 nodes carry their own)
        return host.node_info(kind).get("display_name") or host.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(kind, kind)

    assert {kind: shown(kind) for kind in names} == names


def test_a_workflow_without_its_note_gets_no_card_and_says_what_to_add(tmp_path):
    cards = load_card_script()
    data = json.loads(WORKFLOWS[0].read_text())
    data["nodes"] = [n for n in data["nodes"] if n["type"] not in NOTES]
    with pytest.raises(cards.CardError, match=r"my\.json: expected a MarkdownNote .* Add the note"):
        cards.draw_card(data, tmp_path / "my.json")
