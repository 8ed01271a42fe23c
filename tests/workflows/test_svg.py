"""The picture of a workflow graph: layered layout, colours by status, edge styles, escaping."""

from __future__ import annotations

import re
import time
from xml.etree import ElementTree

import pytest

from workflows.svg import EDGE_STYLE, NODE_H, NODE_W, STATUS_STYLE, graph_svg, layers, positions

pytestmark = pytest.mark.django_db  # the suite's autouse cache fixture needs the test database

SVG = "{http://www.w3.org/2000/svg}"
DIAMOND_EDGES = [("a", "b", "success"), ("a", "c", "failure"), ("b", "d", "success"), ("c", "d", "always")]


def diamond(**status: str) -> list[dict]:
    return [
        {"key": key, "label": f"Step {key}", "status": status.get(key, "waiting"), "href": f"/admin/t/{key}/"}
        for key in "abcd"
    ]


def parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)  # noqa: S314 - our own output


def node_rect(root: ElementTree.Element, key: str) -> ElementTree.Element:
    for group in root.iter(f"{SVG}g"):
        if group.get("data-key") == key:
            return group.find(f"{SVG}rect")
    raise AssertionError(f"no node {key}")


def test_columns_are_the_longest_path_and_rows_stack_within_a_column():
    # e is reached by a -> e directly and by a -> b -> d -> e: the longest path puts it in column 3.
    keys = ["a", "b", "c", "d", "e"]
    edges = [("a", "b", "success"), ("a", "c", "success"), ("b", "d", "success"), ("d", "e", "success")]
    edges.append(("a", "e", "success"))
    assert layers(keys, edges) == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3}
    assert positions(keys, edges) == {"a": (0, 0), "b": (1, 0), "c": (1, 1), "d": (2, 0), "e": (3, 0)}


def test_shape_one_rect_per_node_one_path_per_edge_with_arrowheads():
    root = parse(graph_svg(diamond(), DIAMOND_EDGES))
    assert root.tag == f"{SVG}svg"
    rects = list(root.iter(f"{SVG}rect"))
    assert len(rects) == 4
    assert {(r.get("width"), r.get("height")) for r in rects} == {(str(NODE_W), str(NODE_H))}
    edges = [p for p in root.iter(f"{SVG}path") if "wf-edge" in (p.get("class") or "")]
    assert len(edges) == 4
    assert all(p.get("marker-end", "").startswith("url(#wf-arrow-") for p in edges)
    markers = {m.get("id") for m in root.iter(f"{SVG}marker")}
    assert {p.get("marker-end")[5:-1] for p in edges} <= markers
    # a is left of b and c; b and c share a column; d is right of both.
    x = {key: float(node_rect(root, key).get("x")) for key in "abcd"}
    y = {key: float(node_rect(root, key).get("y")) for key in "abcd"}
    assert x["a"] < x["b"] == x["c"] < x["d"]
    assert y["b"] != y["c"]
    # Every node is inside the drawing.
    width, height = float(root.get("width")), float(root.get("height"))
    assert all(x[k] + NODE_W <= width and y[k] + NODE_H <= height for k in "abcd")


def test_edge_styles_failure_dashed_red_always_dotted():
    root = parse(graph_svg(diamond(), DIAMOND_EDGES))
    by_kind = {p.get("class").split()[-1]: p for p in root.iter(f"{SVG}path") if p.get("class")}
    assert by_kind["wf-edge-failure"].get("stroke") == EDGE_STYLE["failure"][0] == "#dc2626"
    assert by_kind["wf-edge-failure"].get("stroke-dasharray") == "6 4"
    assert by_kind["wf-edge-always"].get("stroke-dasharray") == "2 3"
    assert by_kind["wf-edge-success"].get("stroke-dasharray") is None


def test_nodes_are_coloured_by_status_and_link_with_a_title():
    statuses = {"a": "succeeded", "b": "failed", "c": "running", "d": "skipped"}
    root = parse(graph_svg(diamond(**statuses), DIAMOND_EDGES))
    for key, status in statuses.items():
        assert node_rect(root, key).get("fill") == STATUS_STYLE[status][0]
    assert STATUS_STYLE["succeeded"][0] == "#16a34a"
    assert STATUS_STYLE["failed"][0] == "#dc2626"
    links = {a.get("href") for a in root.iter(f"{SVG}a")}
    assert links == {f"/admin/t/{k}/" for k in "abcd"}
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "a — Step a (succeeded)" in titles
    assert "c → d (on always)" in titles
    # Distinct statuses, distinct fills.
    fills = {style[0] for status, style in STATUS_STYLE.items() if status}
    assert len(fills) == len(STATUS_STYLE) - 1


def test_labels_keys_and_links_are_escaped():
    evil = '<script>alert(1)</script>"&'
    nodes = [
        {"key": 'k"><script>x()</script>', "label": evil, "status": "waiting", "href": '/x" onload="y()'},
        {"key": "b", "label": "ok", "status": '"><b>', "href": None, "links": [(evil, "javascript:'")]},
    ]
    svg = graph_svg(nodes, [('k"><script>x()</script>', "b", '"/><g onload="z')])
    assert "<script" not in svg
    assert 'onload="' not in svg
    assert "<b>" not in svg
    root = parse(svg)  # still well-formed XML
    assert next(g.get("data-key") for g in root.iter(f"{SVG}g") if g.get("data-key")).startswith('k">')
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert any(t and t.startswith("<script>") for t in texts)  # shown as text, not markup
    # An unknown status is drawn neutral, an unknown edge kind as success.
    assert node_rect(root, "b").get("fill") == STATUS_STYLE[""][0]


def test_deterministic_and_tolerant():
    assert graph_svg(diamond(), DIAMOND_EDGES) == graph_svg(diamond(), DIAMOND_EDGES)
    empty = parse(graph_svg([], []))
    assert not list(empty.iter(f"{SVG}rect"))
    # Edges to unknown nodes are ignored; a cycle still draws every node.
    root = parse(graph_svg(diamond(), [("a", "zz", "success"), ("b", "c", "success"), ("c", "b", "success")]))
    assert len(list(root.iter(f"{SVG}rect"))) == 4
    assert len([p for p in root.iter(f"{SVG}path") if p.get("class")]) == 2


def test_two_hundred_nodes_render_quickly():
    # A chain of 20 columns, each fanning out to 10 nodes: 200 nodes, ~380 edges.
    nodes, edges = [], []
    for column in range(20):
        for row in range(10):
            key = f"n{column}_{row}"
            nodes.append({"key": key, "label": f"template {row}", "status": "waiting", "href": None})
            if column:
                edges.append((f"n{column - 1}_{row}", key, "success"))
                if row:
                    edges.append((f"n{column - 1}_0", key, "always"))
    started = time.monotonic()
    svg = graph_svg(nodes, edges)
    assert time.monotonic() - started < 2
    root = parse(svg)
    assert len(list(root.iter(f"{SVG}rect"))) == 200
    assert len([p for p in root.iter(f"{SVG}path") if p.get("class")]) == len(edges)
    assert float(root.get("width")) > 19 * NODE_W
    assert len(set(re.findall(r'data-key="([^"]+)"', svg))) == 200


def test_long_keys_and_labels_are_cut_in_the_box_and_whole_in_the_title():
    key, label = "k" * 64, "a template with a rather long name indeed"
    root = parse(graph_svg([{"key": key, "label": label, "status": "waiting", "href": None}], []))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "k" * 17 + "…" and texts[1].endswith("…") and len(texts[1]) == 26
    assert next(root.iter(f"{SVG}title")).text == f"{key} — {label} (waiting)"
