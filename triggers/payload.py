"""Reading a delivery: JSON paths, the filters and the parameter mapping. Pure functions.

A JSON path here is the small, predictable subset every sender's payload needs: ``$`` then
``.name`` or ``[index]`` steps (``$.repository.full_name``, ``$.commits[0].id``), or
``['any key']`` for a key with dots or spaces. No wildcards, no filters, no recursion: one path
names at most one value, so a mapping can never fan out or surprise.

Mapping sources: ``$.path`` (a value of the JSON body, its JSON type kept), ``header:Name``
(a request header, a string), ``=literal`` (a string), or ``{"secret": "<name>"}`` (a project
secret reference, passed through untouched for secret parameters).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from typing import Any

Errors = list[tuple[str, str, str]]  # (field, code, message), like templates_app.parameters

PATH_MAX = 500
_STEP_RE = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d{1,6})\]|\['([^'\\]{1,200})'\]")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
FILTER_KEYS = ("events", "event_path", "ref", "ref_path", "match")
EVENTS_MAX = 50
MATCH_MAX = 20
DEFAULT_REF_PATH = "$.ref"
REF_PREFIXES = ("refs/heads/", "refs/tags/")
MISSING = object()


class PathError(ValueError):
    pass


def parse_path(path: Any) -> tuple[str | int, ...]:
    """The steps of ``path`` (``$.a[0]`` -> ``("a", 0)``); ``PathError`` saying what is wrong."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise PathError("A JSON path starts with $, e.g. $.ref or $.repository.full_name.")
    if len(path) > PATH_MAX:
        raise PathError(f"A JSON path has at most {PATH_MAX} characters.")
    steps: list[str | int] = []
    at = 1
    while at < len(path):
        match = _STEP_RE.match(path, at)
        if match is None:
            raise PathError(f"Cannot read {path[at:]!r}: steps are .name, [index] or ['key'] (no wildcards).")
        name, index, quoted = match.groups()
        steps.append(int(index) if index is not None else (name if name is not None else quoted))
        at = match.end()
    return tuple(steps)


def resolve(document: Any, path: str) -> Any:
    """The value at ``path`` in ``document``, or ``MISSING``."""
    value = document
    for step in parse_path(path):
        in_list = isinstance(step, int) and isinstance(value, list) and step < len(value)
        in_object = isinstance(step, str) and isinstance(value, dict) and step in value
        if not (in_list or in_object):
            return MISSING
        value = value[step]
    return value


def as_text(value: Any) -> str:
    """A payload value as the filters compare it (strings as they are, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# --- filters -------------------------------------------------------------------------------------
def filter_errors(filters: Any) -> Errors:
    """Problems with a trigger's ``filters``, each on ``filters.<key>``."""
    if not isinstance(filters, Mapping):
        return [("filters", "invalid", "An object with any of: " + ", ".join(FILTER_KEYS) + ".")]
    errors: Errors = []
    for key in sorted(set(filters) - set(FILTER_KEYS)):
        errors.append(
            (f"filters.{key}", "unknown_key", f"Unknown filter; allowed: {', '.join(FILTER_KEYS)}.")
        )
    events = filters.get("events")
    if events is not None and (
        not isinstance(events, list)
        or not 0 < len(events) <= EVENTS_MAX
        or not all(isinstance(e, str) and 0 < len(e) <= 100 for e in events)
    ):
        errors.append(("filters.events", "invalid", f"A list of 1 to {EVENTS_MAX} event names."))
    ref = filters.get("ref")
    if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= 200):
        errors.append(("filters.ref", "invalid", "A glob such as main, release/*, or refs/tags/v*."))
    for key in ("event_path", "ref_path"):
        if filters.get(key) is not None:
            errors.extend(path_errors(f"filters.{key}", filters[key]))
    match = filters.get("match")
    if match is not None:
        if not isinstance(match, Mapping) or not 0 < len(match) <= MATCH_MAX:
            errors.append(("filters.match", "invalid", f"An object of 1 to {MATCH_MAX} JSON path: value."))
        else:
            for path, expected in match.items():
                errors.extend(path_errors(f"filters.match.{path}", path))
                if isinstance(expected, dict | list):
                    errors.append(
                        (
                            f"filters.match.{path}",
                            "invalid",
                            "Compare with a string, number, boolean or null.",
                        )
                    )
    return errors


def path_errors(field: str, path: Any) -> Errors:
    try:
        parse_path(path)
    except PathError as exc:
        return [(field, "invalid_path", str(exc))]
    return []


def ref_matches(pattern: str, ref: str) -> bool:
    """``pattern`` (a glob) matches the ref, or the branch or tag name without ``refs/…/``."""
    names = [ref, *(ref[len(prefix) :] for prefix in REF_PREFIXES if ref.startswith(prefix))]
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def ignored_reason(filters: Mapping[str, Any], event: str, document: Any) -> str | None:
    """Why a delivery is filtered out (``None``: it passes every filter)."""
    events = filters.get("events")
    if events and event not in events:
        return f"event {event or '(none)'!r} is not one of {', '.join(events)}"
    pattern = filters.get("ref")
    if pattern:
        ref = resolve(document, filters.get("ref_path") or DEFAULT_REF_PATH)
        if not isinstance(ref, str):
            return f"no ref at {filters.get('ref_path') or DEFAULT_REF_PATH}"
        if not ref_matches(pattern, ref):
            return f"ref {ref!r} does not match {pattern!r}"
    for path, expected in (filters.get("match") or {}).items():
        found = resolve(document, path)
        if found is MISSING or found != expected or type(found) is not type(expected):
            shown = "nothing" if found is MISSING else json.dumps(found)[:100]
            return f"{path} is {shown}, not {json.dumps(expected)[:100]}"
    return None


# --- mapping -------------------------------------------------------------------------------------
def is_secret_reference(source: Any) -> bool:
    return (
        isinstance(source, Mapping)
        and set(source) == {"secret"}
        and isinstance(source["secret"], str)
        and 0 < len(source["secret"]) <= 200
    )


def source_errors(field: str, source: Any) -> Errors:
    """Problems with one mapping source (its form only; the parameter is checked elsewhere)."""
    if is_secret_reference(source):
        return []
    if not isinstance(source, str) or not source:
        return [
            (field, "invalid", 'A source: "$.json.path", "header:Name", "=literal" or {"secret": "name"}.')
        ]
    if source.startswith("$"):
        return path_errors(field, source)
    if source.startswith("header:"):
        if not HEADER_RE.match(source[len("header:") :]):
            return [(field, "invalid_header", "A header name: letters, digits and -.")]
        return []
    if source.startswith("="):
        return []
    return [(field, "invalid", 'Start with "$" (a JSON path), "header:" or "=" (a literal).')]


def describe(source: Any) -> str:
    """A source as shown in errors (a secret reference by its name, never a value)."""
    if is_secret_reference(source):
        return f"secret:{source['secret']}"
    return str(source)


def extract(
    mapping: Mapping[str, Any], document: Any, headers: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(values, strings)``: the values the mapping finds, typed (JSON values and secret
    references), and those that arrive as text (headers, literals) for typed coercion.

    A path or header that finds nothing leaves its parameter absent (its default applies, or
    the template's own validation reports it as required).
    """
    values: dict[str, Any] = {}
    strings: dict[str, str] = {}
    lowered = {name.lower(): value for name, value in headers.items()}
    for name, source in mapping.items():
        if is_secret_reference(source):
            values[name] = dict(source)
        elif source.startswith("$"):
            found = resolve(document, source)
            if found is not MISSING:
                values[name] = found
        elif source.startswith("header:"):
            found = lowered.get(source[len("header:") :].lower())
            if found is not None:
                strings[name] = found
        else:
            strings[name] = source[1:]
    return values, strings
