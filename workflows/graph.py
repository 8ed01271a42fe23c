"""The rules of a workflow graph, with no database: checking a definition, bindings, and the
truth table that decides when a node runs.

A definition is ``nodes`` (``{"key", "template", "parameters", "join"}``) and ``edges``
(``{"from", "to", "on"}``). ``definition_errors`` reports every problem at once, each naming its
node or edge: bad keys, unknown templates, cycles, references to nodes that are not upstream,
bindings whose type cannot fit, unbound required parameters, more than ``NODES_MAX`` nodes.

A binding is a parameter value of a node: a literal, ``"{{ params.<name> }}"`` (the run's
parameter, typed), ``"{{ nodes.<key>.outputs.<name> }}"`` (an upstream node's output, typed as
published), or a string with such expressions in text (then rendered as text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from templates_app import parameters as params
from workflows.models import EDGES_MAX, NODES_MAX, PARALLEL_DEFAULT, PARALLEL_MAX, EdgeOn, Join, NodeStatus

Errors = list[tuple[str, str, str]]

KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
EXPRESSION_RE = re.compile(
    r"\{\{\s*(?:params\.(?P<param>[A-Za-z_][A-Za-z0-9_]*)"
    r"|nodes\.(?P<node>[A-Za-z][A-Za-z0-9_-]*)\.outputs\.(?P<output>[A-Za-z_][A-Za-z0-9_-]*)"
    r"|(?P<item>item)(?:\.(?P<field>[A-Za-z_][A-Za-z0-9_-]*))?)\s*\}\}"
)
OPENER = "{{"
NODE_KEYS = frozenset({"key", "template", "parameters", "join", "for_each", "max_parallel"})
EDGE_KEYS = frozenset({"from", "to", "on"})
# Source -> target parameter types a bound value can have (a string may be one of the choices;
# an integer is a number). Anything else cannot fit and is refused at save.
FITS = frozenset(
    {(t, t) for t in params.TYPES} | {("integer", "number"), ("choice", "string"), ("string", "choice")}
)
TEXT_TARGETS = params.TEXT_TYPES


@dataclass(frozen=True, slots=True)
class Expression:
    """One ``{{ ... }}``: a run parameter (``param``), an upstream output (``node``, ``output``),
    or the current item of a fan-out (``item``, and ``field`` for a field of an object item)."""

    param: str | None = None
    node: str | None = None
    output: str | None = None
    item: bool = False
    field: str | None = None

    @classmethod
    def of(cls, match: re.Match[str]) -> Expression:
        return cls(
            match.group("param"),
            match.group("node"),
            match.group("output"),
            bool(match.group("item")),
            match.group("field"),
        )

    def __str__(self) -> str:
        if self.param is not None:
            return f"{{{{ params.{self.param} }}}}"
        if self.item:
            return f"{{{{ item.{self.field} }}}}" if self.field else "{{ item }}"
        return f"{{{{ nodes.{self.node}.outputs.{self.output} }}}}"


@dataclass(frozen=True, slots=True)
class Binding:
    """A node's parameter value, parsed: ``whole`` (the value is one expression, its type kept),
    ``text`` (expressions inside text, rendered as text), or a ``literal``."""

    kind: str  # "whole" | "text" | "literal"
    value: Any
    expressions: tuple[Expression, ...] = ()


def parse_binding(value: Any) -> Binding | str:
    """The binding ``value`` is, or a message saying why it is not one."""
    if not isinstance(value, str) or OPENER not in value:
        return Binding("literal", value)
    found = [Expression.of(match) for match in EXPRESSION_RE.finditer(value)]
    leftover = EXPRESSION_RE.sub("", value)
    if OPENER in leftover or "}}" in leftover:
        return (
            "Not a binding: write {{ params.<name> }}, {{ nodes.<key>.outputs.<name> }} or, in a "
            "for_each node, {{ item }} / {{ item.<name> }} (keys: letters, digits, _ and -)."
        )
    if len(found) == 1 and EXPRESSION_RE.fullmatch(value.strip()):
        return Binding("whole", value, tuple(found))
    return Binding("text", value, tuple(found))


def edge_list(edges: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """``(from, to, on)`` of well-formed edges (``on`` defaults to success)."""
    return [(e["from"], e["to"], e.get("on") or EdgeOn.SUCCESS) for e in edges]


def ancestors_of(keys: Iterable[str], edges: list[tuple[str, str, str]]) -> dict[str, set[str]]:
    """Every node's ancestors (the graph must be acyclic)."""
    parents: dict[str, set[str]] = {key: set() for key in keys}
    for source, target, _ in edges:
        parents[target].add(source)
    found: dict[str, set[str]] = {}

    def walk(key: str) -> set[str]:
        if key not in found:
            found[key] = set()
            result: set[str] = set()
            for parent in parents[key]:
                result |= {parent, *walk(parent)}
            found[key] = result
        return found[key]

    for key in parents:
        walk(key)
    return found


def topological_order(keys: list[str], edges: list[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    """``(order, left)``: Kahn's order of ``keys`` (stable: definition order among equals), and
    the keys left out because they are on or behind a cycle."""
    incoming = dict.fromkeys(keys, 0)
    children: dict[str, list[str]] = {key: [] for key in keys}
    for source, target, _ in edges:
        incoming[target] += 1
        children[source].append(target)
    ready = [key for key in keys if incoming[key] == 0]
    order: list[str] = []
    while ready:
        key = ready.pop(0)
        order.append(key)
        for child in children[key]:
            incoming[child] -= 1
            if incoming[child] == 0:
                ready.append(child)
    return order, [key for key in keys if key not in order]


# --- Checking a definition -------------------------------------------------------------------------
TemplateLookup = Callable[[str], "tuple[Any, list[dict[str, Any]]] | None"]


def definition_errors(
    nodes: Any, edges: Any, spec: list[dict[str, Any]], lookup: TemplateLookup
) -> tuple[list[dict[str, Any]], Errors]:
    """``(nodes as stored, errors)``: each node's template resolved by ``lookup`` (id or slug ->
    ``(template, its declarations)``) and stored by id; every problem of the definition."""
    errors: Errors = []
    if not isinstance(nodes, list) or not nodes:
        return [], [("nodes", "required", "A workflow needs at least one node (a JSON list).")]
    if len(nodes) > NODES_MAX:
        return [], [("nodes", "max_items", f"At most {NODES_MAX} nodes (got {len(nodes)}).")]
    if not isinstance(edges, list):
        return [], [("edges", "invalid_type", "A JSON list of edges.")]
    if len(edges) > EDGES_MAX:
        return [], [("edges", "max_items", f"At most {EDGES_MAX} edges (got {len(edges)}).")]
    keys: dict[str, int] = {}
    stored: list[dict[str, Any]] = []
    templates: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    for index, node in enumerate(nodes):
        node_errors, entry, found = _node_shape(node, index, keys, lookup)
        errors += node_errors
        if entry is not None:
            stored.append(entry)
            if found is not None:
                templates[entry["key"]] = found
    good_edges, edge_errors = _edges_shape(edges, keys)
    errors += edge_errors
    _, cyclic = topological_order(list(keys), good_edges)
    if cyclic:
        errors.append(
            (
                "edges",
                "cycle",
                f"The edges make a cycle through: {', '.join(cyclic)} (a workflow is acyclic).",
            )
        )
        return stored, errors
    upstream = ancestors_of(keys, good_edges)
    declared = {item["name"]: item for item in params.normalize_spec(spec)}
    for entry in stored:
        if entry["key"] in templates:
            errors += _binding_errors(
                entry, keys[entry["key"]], templates[entry["key"]][1], declared, upstream
            )
    return stored, errors


def _node_shape(
    node: Any, index: int, keys: dict[str, int], lookup: TemplateLookup
) -> tuple[Errors, dict[str, Any] | None, tuple[Any, list[dict[str, Any]]] | None]:
    at = f"nodes[{index}]"
    if not isinstance(node, Mapping):
        return [(at, "invalid_type", "A node is a JSON object.")], None, None
    errors: Errors = []
    unknown = sorted(set(node) - NODE_KEYS)
    if unknown:
        errors.append(
            (
                at,
                "unknown_field",
                f"Unknown field(s) {', '.join(unknown)}; a node has {', '.join(sorted(NODE_KEYS))}.",
            )
        )
    key = node.get("key")
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        errors.append((f"{at}.key", "invalid", "A key: a letter, then up to 63 letters, digits, _ or -."))
        return errors, None, None
    if key in keys:
        errors.append((f"{at}.key", "unique", f'Node "{key}" is defined twice.'))
        return errors, None, None
    keys[key] = index
    name = f'Node "{key}"'
    join = node.get("join") or Join.ALL
    if join not in Join.values:
        errors.append((f"{at}.join", "invalid_choice", f"{name}: join is all or any."))
    bindings = node.get("parameters") or {}
    if not isinstance(bindings, Mapping):
        errors.append((f"{at}.parameters", "invalid_type", f"{name}: parameters is a JSON object."))
        bindings = {}
    ref = node.get("template")
    found = lookup(ref) if isinstance(ref, str) and ref else None
    if found is None:
        errors.append((f"{at}.template", "unknown_template", f"{name}: no template {ref!r} in this project."))
    entry = {
        "key": key,
        "template": str(found[0].pk) if found else ref,
        "parameters": dict(bindings),
        "join": join,
    }
    if node.get("for_each") is not None or node.get("max_parallel") is not None:
        errors += _fan_out_shape(node, at, name, entry)
    return errors, entry, found


def _fan_out_shape(node: Mapping[str, Any], at: str, name: str, entry: dict[str, Any]) -> Errors:
    """``for_each`` must be one ``{{ nodes.<key>.outputs.<name> }}``; ``max_parallel`` 1..50."""
    errors: Errors = []
    for_each = node.get("for_each")
    binding = parse_binding(for_each) if isinstance(for_each, str) else None
    if not isinstance(binding, Binding) or binding.kind != "whole" or binding.expressions[0].node is None:
        errors.append(
            (
                f"{at}.for_each",
                "invalid",
                f"{name}: for_each is one {{{{ nodes.<key>.outputs.<name> }}}} (a list).",
            )
        )
    else:
        entry["for_each"] = for_each.strip()
    parallel = node.get("max_parallel", PARALLEL_DEFAULT)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= PARALLEL_MAX:
        errors.append(
            (f"{at}.max_parallel", "invalid", f"{name}: max_parallel is an integer 1..{PARALLEL_MAX}.")
        )
    elif for_each is None:
        errors.append((f"{at}.max_parallel", "invalid", f"{name}: max_parallel goes with for_each."))
    else:
        entry["max_parallel"] = parallel
    return errors


def _edges_shape(edges: list[Any], keys: Mapping[str, int]) -> tuple[list[tuple[str, str, str]], Errors]:
    errors: Errors = []
    good: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for index, edge in enumerate(edges):
        at = f"edges[{index}]"
        if not isinstance(edge, Mapping):
            errors.append((at, "invalid_type", "An edge is a JSON object {from, to, on}."))
            continue
        unknown = sorted(set(edge) - EDGE_KEYS)
        if unknown:
            errors.append(
                (at, "unknown_field", f"Unknown field(s) {', '.join(unknown)}; an edge has from, to, on.")
            )
        source, target, on = edge.get("from"), edge.get("to"), edge.get("on") or EdgeOn.SUCCESS
        label = f"Edge {source!r} -> {target!r}"
        bad = False
        for end, value in (("from", source), ("to", target)):
            if not isinstance(value, str) or value not in keys:
                errors.append((f"{at}.{end}", "unknown_node", f"{label}: no node {value!r}."))
                bad = True
        if on not in EdgeOn.values:
            errors.append((f"{at}.on", "invalid_choice", f"{label}: on is success, failure or always."))
            bad = True
        if bad:
            continue
        if source == target:
            errors.append((at, "cycle", f"{label}: a node cannot follow itself."))
        elif (source, target) in seen:
            errors.append((at, "duplicate", f"{label} is defined twice (one edge per pair)."))
        else:
            seen.add((source, target))
            good.append((source, target, on))
    return good, errors


def _binding_errors(
    entry: Mapping[str, Any],
    index: int,
    target_spec: list[dict[str, Any]],
    declared: Mapping[str, Mapping[str, Any]],
    upstream: Mapping[str, set[str]],
) -> Errors:
    key = entry["key"]
    targets = {item["name"]: item for item in params.normalize_spec(target_spec)}
    errors: Errors = []
    if "for_each" in entry:
        source = parse_binding(entry["for_each"])
        assert isinstance(source, Binding)
        if source.expressions[0].node not in upstream[key]:
            errors.append(
                (
                    f"nodes[{index}].for_each",
                    "not_upstream",
                    f'Node "{key}": for_each names a node that is not upstream of it.',
                )
            )
    for name, raw in entry["parameters"].items():
        at = f"nodes[{index}].parameters.{name}"
        where = f'Node "{key}", parameter {name}'
        target = targets.get(name)
        if target is None:
            errors.append(
                (at, "unknown", f"{where}: not a parameter of its template ({', '.join(targets) or 'none'}).")
            )
            continue
        binding = parse_binding(raw)
        if isinstance(binding, str):
            errors.append((at, "invalid_binding", f"{where}: {binding}"))
            continue
        if binding.kind == "literal":
            _, problems = params.validate([target], {name: raw})
            errors += [(at, code, f"{where}: {message}") for _, code, message in problems]
            continue
        if binding.kind == "text" and target["type"] not in TEXT_TARGETS:
            errors.append((at, "type_mismatch", f"{where}: text cannot fit {_a(target['type'])} parameter."))
        for expression in binding.expressions:
            errors += _expression_errors(
                expression, binding, target, declared, upstream[key], at, where, "for_each" in entry
            )
    for name, target in targets.items():
        if target["required"] and target["default"] is None and name not in entry["parameters"]:
            errors.append(
                (
                    f"nodes[{index}].parameters.{name}",
                    "required",
                    f'Node "{key}": {name} is required and not bound.',
                )
            )
    return errors


def _expression_errors(
    expression: Expression,
    binding: Binding,
    target: Mapping[str, Any],
    declared: Mapping[str, Mapping[str, Any]],
    upstream: set[str],
    at: str,
    where: str,
    fan_out: bool,
) -> Errors:
    if expression.item:
        if not fan_out:
            return [(at, "item_outside_for_each", f"{where}: {expression} is only known in a for_each node.")]
        return []
    if expression.node is not None:
        if expression.node not in upstream:
            return [(at, "not_upstream", f"{where}: {expression} names a node that is not upstream of it.")]
        return []
    source = declared.get(expression.param or "")
    if source is None:
        return [(at, "unknown_parameter", f"{where}: {expression} is not a parameter of the workflow.")]
    if source["secret"] and (binding.kind == "text" or not target["secret"]):
        return [(at, "secret_binding", f"{where}: a secret parameter goes whole to a secret parameter only.")]
    if binding.kind == "whole" and (source["type"], target["type"]) not in FITS:
        return [
            (at, "type_mismatch", f"{where}: {_a(source['type'])} cannot fit {_a(target['type'])} parameter.")
        ]
    return []


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


# --- Resolving bindings when a node starts -----------------------------------------------------------
NO_ITEM = object()


def resolve(
    bindings: Mapping[str, Any],
    run_parameters: Mapping[str, Any],
    outputs: Mapping[str, Mapping[str, Any]],
    item: Any = NO_ITEM,
) -> tuple[dict[str, Any], list[str]]:
    """``(values, problems)``: the node's parameter values from the run's parameters, its
    upstream nodes' ``outputs`` and, in a fan-out, its ``item``; each problem names the binding
    that found no value."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, raw in bindings.items():
        binding = parse_binding(raw)
        if isinstance(binding, str) or binding.kind == "literal":
            values[name] = raw
            continue
        found: list[Any] = []
        for expression in binding.expressions:
            if expression.item:
                value = _item_value(item, expression)
                if value is NO_ITEM:
                    problems.append(f"{name}: {expression} has no value for this item.")
                else:
                    found.append(value)
            elif expression.param is not None:
                if expression.param not in run_parameters:
                    problems.append(f"{name}: {expression} has no value in this run.")
                    continue
                found.append(run_parameters[expression.param])
            else:
                published = outputs.get(expression.node or "")
                if published is None:
                    problems.append(
                        f"{name}: {expression}: {expression.node} has no outputs (skipped, or never ran)."
                    )
                elif expression.output not in published:
                    has = ", ".join(sorted(published)) or "none"
                    problems.append(
                        f"{name}: {expression}: {expression.node} did not publish it (it has: {has})."
                    )
                else:
                    found.append(published[expression.output])
        if len(found) != len(binding.expressions):
            continue
        if binding.kind == "whole":
            values[name] = found[0]
        else:
            text = raw
            for expression, value in zip(binding.expressions, found, strict=True):
                text = text.replace(_source_of(raw, expression), _as_text(value), 1)
            values[name] = text
    return values, problems


def _as_text(value: Any) -> str:
    """A value inside text: lists and objects in their JSON spelling, the rest as templates do."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return params.as_text(value)


def _item_value(item: Any, expression: Expression) -> Any:
    if item is NO_ITEM or expression.field is None:
        return item
    if isinstance(item, Mapping) and expression.field in item:
        return item[expression.field]
    return NO_ITEM


def _source_of(text: str, expression: Expression) -> str:
    for match in EXPRESSION_RE.finditer(text):
        if Expression.of(match) == expression:
            return match.group(0)
    return str(expression)  # pragma: no cover - the expression was parsed from this text


# --- The truth table --------------------------------------------------------------------------------
PENDING, MET, UNMET, VOID = "pending", "met", "unmet", "void"
_NOT_ENDED = frozenset({NodeStatus.WAITING, NodeStatus.QUEUED, NodeStatus.RUNNING})
_FAILED = frozenset({NodeStatus.FAILED, NodeStatus.CANCELLED})


def edge_state(source_status: str, on: str) -> str:
    """An incoming edge: ``pending`` (its source has not ended), ``met`` (its source ended the way
    ``on`` asks), ``unmet`` (it ended the other way), ``void`` (its source was skipped)."""
    if source_status in _NOT_ENDED:
        return PENDING
    if source_status == NodeStatus.SKIPPED:
        return VOID
    failed = source_status in _FAILED
    if on == EdgeOn.ALWAYS or (on == EdgeOn.FAILURE) == failed:
        return MET
    return UNMET


RUN, SKIP, WAIT = "run", "skip", "wait"


def decide(join: str, states: list[str]) -> str:
    """Whether a waiting node runs, is skipped, or waits, from its incoming edges' states.

    No incoming edge: run. ``any``: run once one edge is met; skip once none is pending and none
    was met. ``all``: skip once one edge is unmet (the join can no longer hold); run once none is
    pending and at least one is met (edges from skipped nodes do not count); skip if all are void.
    """
    if not states:
        return RUN
    if join == Join.ANY:
        if MET in states:
            return RUN
        return WAIT if PENDING in states else SKIP
    if UNMET in states:
        return SKIP
    if PENDING in states:
        return WAIT
    return RUN if MET in states else SKIP


def handles_failure(key: str, edges: list[tuple[str, str, str]]) -> bool:
    """True when an edge leaving ``key`` is taken on its failure (``failure`` or ``always``)."""
    return any(source == key and on != EdgeOn.SUCCESS for source, _, on in edges)
