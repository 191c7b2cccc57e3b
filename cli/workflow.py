"""Turn a workflow saved by the ComfyUI front end into the API prompt the server executes.

The saved (UI) format keeps widget values as a positional list per node; the API format
names every input. Matching the two needs each node's input definition (what the
server's /object_info reports), so the caller passes ``node_info``.
"""

from __future__ import annotations

from collections.abc import Callable

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MUTED, BYPASSED = 2, 4  # LiteGraph node modes
NOTES = {"Note", "MarkdownNote"}  # text for the reader: the front end never sends them to the server


class WorkflowError(ValueError):
    pass


def _is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def _has_control_widget(name: str, spec) -> bool:
    # The front end adds a "control after generate" value after seed-like widgets.
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(options.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def to_api_prompt(workflow: dict, node_info: Callable[[str], dict]) -> dict:
    """The API prompt of a UI workflow. ``node_info(class_type)`` returns /object_info's entry."""
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("not a ComfyUI workflow saved from the front end (no 'nodes' and 'links')")
    links = {link[0]: link for link in workflow["links"]}  # [id, from node, from slot, to node, to slot, type]
    prompt = {}
    for node in workflow["nodes"]:
        mode = node.get("mode", 0)
        if mode == MUTED or node["type"] in NOTES:
            continue
        if mode == BYPASSED:
            raise WorkflowError(f"node {node['id']} ({node['type']}) is bypassed; un-bypass or remove it")
        info = node_info(node["type"])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values") or []
        if not isinstance(values, list):
            raise WorkflowError(f"node {node['id']} ({node['type']}) stores its widgets in a form "
                                "this tool cannot read")
        values = list(values)
        inputs = {}
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                spec = info["input"][section][name]
                if _is_widget(spec):
                    if not values:
                        raise WorkflowError(f"node {node['id']} ({node['type']}) has no value for '{name}'")
                    inputs[name] = values.pop(0)
                    if _has_control_widget(name, spec) and values and values[0] in SEED_CONTROL_VALUES:
                        values.pop(0)
                if name in linked:
                    _, source, slot, *_ = linked[name]
                    inputs[name] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or node["type"]}}
    return prompt


def nodes_of_type(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def only_node_of_type(prompt: dict, class_types: tuple[str, ...]) -> str:
    found = [node_id for t in class_types for node_id in nodes_of_type(prompt, t)]
    if len(found) != 1:
        raise WorkflowError(f"expected exactly one {' or '.join(class_types)} node, found {len(found)}")
    return found[0]
