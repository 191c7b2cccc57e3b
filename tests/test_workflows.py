"""The example workflows, as the main job reads them: each converts to an API prompt against
the real node definitions, with every required input set and every link pointing at a node."""

import json
from pathlib import Path

import pytest
from thirdparty import PACKS

from cli.workflow import WorkflowError, to_api_prompt

pytestmark = pytest.mark.host
WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_converts_to_a_complete_prompt(workflow, host, thirdparty):
    for name in PACKS:  # the IP-Adapter example uses cubiq's nodes, as its README says
        thirdparty(name)
    prompt = to_api_prompt(json.loads(workflow.read_text()), host.node_info)
    assert any(node["class_type"].startswith("BKSDM") for node in prompt.values())
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
    workflow = json.loads(WORKFLOWS[0].read_text())
    save = next(n for n in workflow["nodes"] if n["type"] == "SaveImage")
    save["mode"] = 2
    assert str(save["id"]) not in to_api_prompt(workflow, host.node_info)
    save["mode"] = 4
    with pytest.raises(WorkflowError, match="bypassed"):
        to_api_prompt(workflow, host.node_info)
