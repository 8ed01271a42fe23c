"""The picture of a workflow graph, drawn on the server as SVG (no script, no CDN: it works
offline and under the admin's Content-Security-Policy).

``graph_svg(nodes, edges)`` is a pure function: the same input gives the same bytes. The layout
is layered: a node's column is the length of the longest path reaching it, and nodes of a column
are stacked in rows (ordered by the mean row of their parents, then by their order in ``nodes``).
Each node is a rectangle coloured by its status, with its key, its label and a ``<title>`` shown
on hover; an edge is a curve with an arrowhead: solid for ``success``, dashed red for
``failure``, dotted for ``always``. Every text and link goes through ``format_html``: a key or a
template name cannot inject markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

NODE_W = 180
NODE_H = 46
COL_GAP = 64
ROW_GAP = 22
PAD = 16
LABEL_CHARS = 26  # 11 px text in the box
KEY_CHARS = 18  # 13 px bold; 14 when a link shares its line

# status -> (fill, stroke, text colour)
STATUS_STYLE: dict[str, tuple[str, str, str]] = {
    "": ("#ffffff", "#6b7280", "#111827"),  # a template's node: no status
    "waiting": ("#d1d5db", "#6b7280", "#111827"),
    "queued": ("#93c5fd", "#2563eb", "#0b1f4d"),
    "running": ("#2563eb", "#1e3a8a", "#ffffff"),
    "succeeded": ("#16a34a", "#14532d", "#ffffff"),
    "failed": ("#dc2626", "#7f1d1d", "#ffffff"),
    "skipped": ("#f3f4f6", "#d1d5db", "#6b7280"),
    "cancelled": ("#374151", "#111827", "#ffffff"),
}
# on -> (stroke colour, dash pattern)
EDGE_STYLE: dict[str, tuple[str, str]] = {
    "success": ("#4b5563", ""),
    "failure": ("#dc2626", "6 4"),
    "always": ("#4b5563", "2 3"),
}


def layers(keys: Sequence[str], edges: Iterable[tuple[str, str, str]]) -> dict[str, int]:
    """Each key's column: the length of the longest path from a root to it. Edges naming an
    unknown key are ignored; keys on a cycle (never stored, but drawn if given) go one column
    right of everything else."""
    known = set(keys)
    parents: dict[str, list[str]] = {key: [] for key in keys}
    children: dict[str, list[str]] = {key: [] for key in keys}
    incoming = dict.fromkeys(keys, 0)
    for source, target, _on in edges:
        if source in known and target in known and source != target:
            parents[target].append(source)
            children[source].append(target)
            incoming[target] += 1
    depth = dict.fromkeys(keys, 0)
    ready = [key for key in keys if incoming[key] == 0]
    seen: set[str] = set()
    while ready:
        key = ready.pop(0)
        seen.add(key)
        for child in children[key]:
            depth[child] = max(depth[child], depth[key] + 1)
            incoming[child] -= 1
            if incoming[child] == 0:
                ready.append(child)
    last = max((depth[key] for key in seen), default=-1)
    for key in keys:
        if key not in seen:
            depth[key] = last + 1
    return depth


def positions(keys: Sequence[str], edges: Sequence[tuple[str, str, str]]) -> dict[str, tuple[int, int]]:
    """``key -> (column, row)``."""
    depth = layers(keys, edges)
    parents: dict[str, list[str]] = {key: [] for key in keys}
    for source, target, _on in edges:
        if source in parents and target in parents:
            parents[target].append(source)
    index = {key: i for i, key in enumerate(keys)}
    row: dict[str, int] = {}
    for column in range(max(depth.values(), default=-1) + 1):
        members = [key for key in keys if depth[key] == column]

        def weight(key: str) -> tuple[float, int]:
            placed = [row[p] for p in parents[key] if p in row]
            return (sum(placed) / len(placed) if placed else -1.0, index[key])

        for r, key in enumerate(sorted(members, key=weight)):
            row[key] = r
    return {key: (depth[key], row[key]) for key in keys}


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node(node: Mapping[str, Any], x: int, y: int) -> SafeString:
    key = str(node["key"])
    label = str(node.get("label") or "")
    status = str(node.get("status") or "")
    fill, stroke, ink = STATUS_STYLE.get(status, STATUS_STYLE[""])
    title = f"{key} — {label}" if label else key
    if status:
        title += f" ({status})"
    body = format_html(
        '<g class="wf-node" data-key="{}" data-status="{}"><title>{}</title>'
        '<rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{}" stroke="{}" stroke-width="1.5"/>'
        '<text x="{}" y="{}" fill="{}" font-size="13" font-weight="bold">{}</text>'
        '<text x="{}" y="{}" fill="{}" font-size="11">{}</text></g>',
        key,
        status,
        title,
        x,
        y,
        NODE_W,
        NODE_H,
        fill,
        stroke,
        x + 8,
        y + 18,
        ink,
        _short(key, KEY_CHARS - 4 if node.get("links") else KEY_CHARS),
        x + 8,
        y + 36,
        ink,
        _short(label),
    )
    href = node.get("href")
    if href:
        body = format_html('<a href="{}" style="text-decoration:none">{}</a>', href, body)
    links = format_html_join(
        "",
        '<a href="{}"><text x="{}" y="{}" fill="{}" font-size="10" text-anchor="end" '
        'text-decoration="underline">{}</text></a>',
        (
            (link_href, x + NODE_W - 6, y + 14 + 12 * i, ink, _short(str(text), 12))
            for i, (text, link_href) in enumerate(node.get("links") or ())
        ),
    )
    return format_html("{}{}", body, links)


def _edge(source: tuple[int, int], target: tuple[int, int], names: tuple[str, str, str]) -> SafeString:
    x1, y1 = source[0] + NODE_W, source[1] + NODE_H // 2
    x2, y2 = target[0] - 2, target[1] + NODE_H // 2
    bend = max((x2 - x1) // 2, 24)
    on = names[2] if names[2] in EDGE_STYLE else "success"
    colour, dash = EDGE_STYLE[on]
    return format_html(
        '<path class="wf-edge wf-edge-{}" d="M {} {} C {} {}, {} {}, {} {}" fill="none" stroke="{}" '
        'stroke-width="1.5"{} marker-end="url(#wf-arrow-{})"><title>{} → {} (on {})</title></path>',
        on,
        x1,
        y1,
        x1 + bend,
        y1,
        x2 - bend,
        y2,
        x2,
        y2,
        colour,
        format_html(' stroke-dasharray="{}"', dash) if dash else "",
        on,
        names[0],
        names[1],
        on,
    )


def graph_svg(nodes: Sequence[Mapping[str, Any]], edges: Sequence[tuple[str, str, str]]) -> str:
    """The SVG (one ``<svg>`` element, safe to put in a page) of ``nodes`` (``{"key", "label",
    "status", "href"}``, optionally ``"links": [(text, href)]``) and ``edges`` (``(from, to,
    on)``)."""
    keys = [str(node["key"]) for node in nodes]
    edges = [(str(s), str(t), str(on or "success")) for s, t, on in edges]
    place = positions(keys, edges)
    xy = {
        key: (PAD + column * (NODE_W + COL_GAP), PAD + row * (NODE_H + ROW_GAP))
        for key, (column, row) in place.items()
    }
    columns = max((column for column, _row in place.values()), default=-1) + 1
    rows = max((row for _column, row in place.values()), default=-1) + 1
    width = max(2 * PAD + columns * NODE_W + max(columns - 1, 0) * COL_GAP, 2 * PAD)
    height = max(2 * PAD + rows * NODE_H + max(rows - 1, 0) * ROW_GAP, 2 * PAD)
    markers = format_html_join(
        "",
        '<marker id="wf-arrow-{}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{}"/></marker>',
        ((on, colour) for on, (colour, _dash) in EDGE_STYLE.items()),
    )
    drawn_edges = mark_safe(  # noqa: S308 - each part is format_html's output
        "".join(_edge(xy[s], xy[t], (s, t, on)) for s, t, on in edges if s in xy and t in xy)
    )
    drawn_nodes = mark_safe(  # noqa: S308 - each part is format_html's output
        "".join(_node(node, *xy[str(node["key"])]) for node in nodes)
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="wf-graph" width="{}" height="{}" '
        'viewBox="0 0 {} {}" font-family="sans-serif" role="img" aria-label="workflow graph">'
        "<defs>{}</defs>{}{}</svg>",
        width,
        height,
        width,
        height,
        markers,
        drawn_edges,
        drawn_nodes,
    )


def legend_html(with_status: bool = True) -> str:
    """A line of coloured swatches naming the statuses and edge kinds (for the admin pages)."""
    swatch = (
        '<span style="display:inline-block;margin-right:10px"><span style="display:inline-block;'
        'width:12px;height:12px;border:1px solid {};background:{};vertical-align:middle"></span> {}</span>'
    )
    statuses = (
        format_html_join(
            "",
            swatch,
            ((stroke, fill, status) for status, (fill, stroke, _ink) in STATUS_STYLE.items() if status),
        )
        if with_status
        else ""
    )
    lines = format_html_join(
        "",
        '<span style="display:inline-block;margin-right:10px"><span style="display:inline-block;'
        'width:24px;border-top:2px {} {};vertical-align:middle"></span> on {}</span>',
        (
            ("solid" if not dash else "dashed" if on == "failure" else "dotted", colour, on)
            for on, (colour, dash) in EDGE_STYLE.items()
        ),
    )
    return format_html(
        '<div class="wf-legend" style="font-size:11px;margin:4px 0">{}{}</div>', statuses, lines
    )
