"""Typed template parameters: checking a template's declarations, validating values, rendering.

Pure functions, no database: the services, the API, the admin and the ``trigger`` command all
call them, so a rule lives here once.

- ``validate_spec(spec)`` checks the declarations of a template (names, types, rules, and that
  each default obeys its own rules).
- ``validate(spec, values)`` checks values against the declarations and returns
  ``(clean, errors)``: every problem at once, keyed ``parameters.<name>``.
- ``coerce_strings(spec, raw)`` turns ``--param k=v`` strings (the CLI) into typed values.
- ``render_pattern`` fills ``{{ name }}`` in the name and description patterns.
- ``check_script`` / ``render_script`` check where a script uses its placeholders and replace
  them by the value quoted for the script's language, so no value can inject code.
  Secret parameters are never written into a script: their placeholder becomes a reference to
  the ``PARAM_<NAME>`` environment variable.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.secrets import MASK
from executions.engine.sandbox import SandboxConfig
from templates_app import bash_taint
from vault.services import is_secret_ref

# --- Limits and vocabulary ------------------------------------------------------------------------
PARAMETERS_MAX = 50
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
VALUE_MAX_CHARS = 65_536
CHOICES_MAX = 200
DESCRIPTION_MAX = 1000
PATTERN_MAX = 500
TYPES = ("string", "integer", "number", "boolean", "choice")
TEXT_TYPES = frozenset({"string", "choice"})
# Strings the CLI accepts for booleans and numbers (it has only strings).
CLI_TRUE, CLI_FALSE = "true", "false"
INTEGER_LITERAL = re.compile(r"^[+-]?[0-9]+$")
DECIMAL_LITERAL = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")

KNOWN_KEYS = (
    "name",
    "type",
    "required",
    "default",
    "choices",
    "min",
    "max",
    "min_length",
    "max_length",
    "pattern",
    "secret",
    "description",
)

Errors = list[tuple[str, str, str]]  # (field, code, message)


def env_name(name: str) -> str:
    """The environment variable that carries parameter ``name`` to the script."""
    return f"PARAM_{name.upper()}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _type_label(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_int(value):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- Declarations ---------------------------------------------------------------------------------
def normalize_spec(spec: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fill absent keys with their defaults so every declaration has the same shape."""
    out = []
    for item in spec:
        out.append(
            {
                "name": item.get("name"),
                "type": item.get("type", "string"),
                "required": bool(item.get("required", False)),
                "default": item.get("default"),
                "choices": list(item["choices"]) if item.get("choices") is not None else None,
                "min": item.get("min"),
                "max": item.get("max"),
                "min_length": item.get("min_length"),
                "max_length": item.get("max_length"),
                "pattern": item.get("pattern") or "",
                "secret": bool(item.get("secret", False)),
                "description": item.get("description") or "",
            }
        )
    return out


def validate_spec(spec: list[Mapping[str, Any]]) -> Errors:
    """Problems with a template's parameter declarations, as ``(field, code, message)``.

    ``field`` is ``parameters[<index>].<key>``.
    """
    errors: Errors = []
    if len(spec) > PARAMETERS_MAX:
        errors.append(("parameters", "max_items", f"At most {PARAMETERS_MAX} parameters."))
    seen: dict[str, int] = {}  # upper-cased name -> index
    for index, raw in enumerate(spec):
        at = f"parameters[{index}]"
        for key, code, message in _declaration_errors(raw, index, seen):
            errors.append((f"{at}.{key}" if key else at, code, message))
    return errors


def _declaration_errors(raw: Any, index: int, seen: dict[str, int]) -> Errors:
    """Problems with one declaration, as ``(key, code, message)`` (key "" for the whole one).

    The steps run in a fixed order (the order of the messages); an unknown type stops after
    the name, and the default is checked against its own rules only when all else is right.
    """
    if not isinstance(raw, Mapping):
        return [("", "invalid", "Each parameter is an object.")]
    item = normalize_spec([raw])[0]
    errors = _unknown_key_errors(raw) + _name_errors(item["name"], index, seen)
    if item["type"] not in TYPES:
        return [
            *errors,
            ("type", "invalid_choice", f"Unknown type {item['type']!r}; one of {', '.join(TYPES)}."),
        ]
    for step in (_flag_errors, _description_errors):
        errors += step(raw)
    for rule in (_choices_errors, _bound_errors, _length_errors, _pattern_errors):
        errors += rule(item)
    return errors + _default_errors(item, checkable=not errors)


def _unknown_key_errors(raw: Mapping[str, Any]) -> Errors:
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if not unknown:
        return []
    return [(unknown[0], "unknown_key", f"Unknown key {unknown[0]!r}; allowed: {', '.join(KNOWN_KEYS)}.")]


def _name_errors(name: Any, index: int, seen: dict[str, int]) -> Errors:
    """A valid name not used before (ignoring case); records it in ``seen``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return [("name", "invalid_name", "A name is 1-64 of A-Z a-z 0-9 _, not starting with a digit.")]
    folded = name.upper()
    duplicate = folded in seen
    seen[folded] = index
    if duplicate:
        return [("name", "duplicate", f"{name!r} is declared twice (names are compared ignoring case).")]
    return []


def _flag_errors(raw: Mapping[str, Any]) -> Errors:
    return [
        (key, "invalid", "Must be true or false.")
        for key in ("required", "secret")
        if key in raw and not isinstance(raw[key], bool)
    ]


def _description_errors(raw: Mapping[str, Any]) -> Errors:
    description = raw.get("description") or ""
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
        return [("description", "invalid", f"A string of at most {DESCRIPTION_MAX} characters.")]
    return []


def _choices_errors(item: Mapping[str, Any]) -> Errors:
    """A choice parameter has distinct non-empty string choices; no other type has choices."""
    choices = item["choices"]
    if item["type"] != "choice":
        if choices is not None:
            return [("choices", "not_allowed", "Only choice parameters have choices.")]
        return []
    if not choices:
        return [("choices", "required", "A choice parameter needs a non-empty list of choices.")]
    if len(choices) > CHOICES_MAX:
        return [("choices", "max_items", f"At most {CHOICES_MAX} choices.")]
    if not all(isinstance(c, str) and c for c in choices):
        return [("choices", "invalid", "Choices are non-empty strings.")]
    if len(set(choices)) != len(choices):
        return [("choices", "duplicate", "Choices must be distinct.")]
    return []


def _bound_errors(item: Mapping[str, Any]) -> Errors:
    """``min`` and ``max``: integer and number parameters only, of their type, in order."""
    type_ = item["type"]
    errors: Errors = []
    for key in ("min", "max"):
        bound = item[key]
        if bound is None:
            continue
        if type_ not in ("integer", "number"):
            errors.append((key, "not_allowed", f"{key} applies to integer and number parameters only."))
        elif not (_is_int(bound) if type_ == "integer" else _is_number(bound)):
            errors.append((key, "invalid", f"Must be {'an integer' if type_ == 'integer' else 'a number'}."))
    if _is_number(item["min"]) and _is_number(item["max"]) and item["min"] > item["max"]:
        errors.append(("min", "invalid", "min is greater than max."))
    return errors


def _length_errors(item: Mapping[str, Any]) -> Errors:
    """``min_length`` and ``max_length``: string parameters only, 0 to VALUE_MAX_CHARS, in order."""
    errors: Errors = []
    for key in ("min_length", "max_length"):
        bound = item[key]
        if bound is None:
            continue
        if item["type"] != "string":
            errors.append((key, "not_allowed", f"{key} applies to string parameters only."))
        elif not _is_int(bound) or not 0 <= bound <= VALUE_MAX_CHARS:
            errors.append((key, "invalid", f"Must be an integer from 0 to {VALUE_MAX_CHARS}."))
    low, high = item["min_length"], item["max_length"]
    if _is_int(low) and _is_int(high) and low > high:
        errors.append(("min_length", "invalid", "min_length is greater than max_length."))
    return errors


def _pattern_errors(item: Mapping[str, Any]) -> Errors:
    """``pattern``: string parameters only, a regular expression Python compiles."""
    pattern = item["pattern"]
    if not pattern:
        return []
    if item["type"] != "string":
        return [("pattern", "not_allowed", "pattern applies to string parameters only.")]
    if not isinstance(pattern, str) or len(pattern) > PATTERN_MAX:
        return [("pattern", "invalid", f"A regular expression of at most {PATTERN_MAX} characters.")]
    try:
        re.compile(pattern)
    except re.error as exc:
        return [("pattern", "invalid_pattern", f"Not a valid regular expression: {exc}.")]
    return []


def _default_errors(item: Mapping[str, Any], *, checkable: bool) -> Errors:
    """No default for a secret; otherwise, when the declaration is ``checkable`` (no other
    problem), the default obeys the declaration's own rules."""
    default = item["default"]
    if default is None:
        return []
    if item["secret"]:
        # A default would be stored on the template and shown by the API and the admin.
        return [("default", "not_allowed", "A secret parameter cannot have a default.")]
    if not checkable:
        return []
    problem = check_value(item, default)
    if problem is None:
        return []
    return [("default", problem[0], f"The default breaks its own rules: {problem[1]}")]


# --- Values ---------------------------------------------------------------------------------------
def check_value(item: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """``(code, message)`` when ``value`` breaks the declaration ``item``, else None.

    Messages never quote the value (it may be a secret).
    """
    type_ = item["type"]
    if type_ in TEXT_TYPES:
        return _check_text(item, value)
    if type_ == "boolean":
        if not isinstance(value, bool):
            return "invalid_type", f"Must be a boolean (JSON true or false), got {_type_label(value)}."
        return None
    return _check_numeric(item, value)


def _check_text(item: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """A string or choice value: a string bash and Python can carry, then the type's rules."""
    if not isinstance(value, str):
        return "invalid_type", f"Must be a string, got {_type_label(value)}."
    if "\x00" in value:
        return "invalid", "Must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid", "Must be valid Unicode (no lone surrogates)."
    if len(value) > VALUE_MAX_CHARS:
        return "max_length", f"At most {VALUE_MAX_CHARS} characters."
    if item["type"] == "choice":
        if value not in item["choices"]:
            return "invalid_choice", f"Not one of the choices: {', '.join(item['choices'])}."
        return None
    if item.get("min_length") is not None and len(value) < item["min_length"]:
        return "min_length", f"At least {item['min_length']} characters (got {len(value)})."
    if item.get("max_length") is not None and len(value) > item["max_length"]:
        return "max_length", f"At most {item['max_length']} characters (got {len(value)})."
    if item.get("pattern") and not re.fullmatch(item["pattern"], value):
        return "pattern_mismatch", f"Does not match the pattern {item['pattern']}."
    return None


def _check_numeric(item: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """An integer or number value: its type (a boolean is neither), then ``min`` and ``max``."""
    type_ = item["type"]
    if type_ == "integer" and not _is_int(value):
        return "invalid_type", f"Must be an integer, got {_type_label(value)}."
    if type_ == "number" and not _is_number(value):
        return "invalid_type", f"Must be a finite number, got {_type_label(value)}."
    if item.get("min") is not None and value < item["min"]:
        return "min_value", f"Must be at least {item['min']}."
    if item.get("max") is not None and value > item["max"]:
        return "max_value", f"Must be at most {item['max']}."
    return None


def validate(
    spec: list[Mapping[str, Any]], values: Mapping[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Check ``values`` against ``spec``: ``(clean values, errors)``.

    Every problem is reported (unknown, missing, wrong type, out of range, too long or short,
    pattern mismatch, not a choice), each as ``("parameters.<name>", code, message)``.
    Absent or null values take the default; an optional parameter without a default stays
    absent. Nothing is coerced: "5" is not an integer and "true" is not a boolean.
    """
    items = {item["name"]: item for item in normalize_spec(spec)}
    errors: Errors = []
    clean: dict[str, Any] = {}
    for name in values:
        if name not in items:
            declared = ", ".join(items) or "none"
            errors.append(
                (f"parameters.{name}", "unknown", f"Not a parameter of this template ({declared}).")
            )
    for name, item in items.items():
        value = values.get(name)
        if value is None:
            if item["default"] is not None:
                clean[name] = item["default"]
            elif item["required"]:
                hint = " Secret values are never stored: pass it again." if item["secret"] else ""
                errors.append((f"parameters.{name}", "required", "This parameter is required." + hint))
            continue
        problem = _reference_problem(item, value) if isinstance(value, Mapping) else check_value(item, value)
        if problem is not None:
            errors.append((f"parameters.{name}", *problem))
        else:
            clean[name] = value
    return clean, errors


def _reference_problem(item: Mapping[str, Any], value: Mapping[str, Any]) -> tuple[str, str] | None:
    """A JSON object as a value: only a secret parameter takes one, a project secret reference
    ``{"secret": "<name>"}`` (whether the name exists is ``vault.services.secret_refs_check``'s)."""
    if not item["secret"]:
        return (
            "invalid_type",
            f"Must be {_expected(item)}, got object (only a secret parameter takes a reference).",
        )
    if not is_secret_ref(value) or not isinstance(value["secret"], str) or not value["secret"]:
        return "invalid_reference", 'A project secret reference is {"secret": "<name>"}, nothing else.'
    return None


def _expected(item: Mapping[str, Any]) -> str:
    return {"boolean": "a boolean", "integer": "an integer", "number": "a number"}.get(
        item["type"], "a string"
    )


def split_secrets(spec: list[Mapping[str, Any]], clean: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(shown, secret)``: the values with secrets masked as ``***``, and the secret values."""
    secret_names = {item["name"] for item in spec if item.get("secret")}
    # A reference to a project secret is shown as it is (it names the secret, never its value).
    shown = {
        name: (value if is_secret_ref(value) else MASK) if name in secret_names else value
        for name, value in clean.items()
    }
    secrets = {name: value for name, value in clean.items() if name in secret_names}
    return shown, secrets


def coerce_strings(spec: list[Mapping[str, Any]], raw: Mapping[str, str]) -> tuple[dict[str, Any], Errors]:
    """Typed values from ``--param k=v`` strings (the CLI, which has only strings).

    boolean: exactly ``true`` or ``false`` (any case); integer: an optional sign and digits;
    number: a decimal literal (``-1``, ``2.5``, ``.5``, ``1e3``); string and choice: as given.
    Anything else is an error naming the parameter; unknown names pass through as strings so
    ``validate`` reports them.
    """
    items = {item["name"]: item for item in normalize_spec(spec)}
    out: dict[str, Any] = {}
    errors: Errors = []
    for name, text in raw.items():
        item = items.get(name)
        type_ = item["type"] if item else "string"
        field = f"parameters.{name}"
        if type_ == "boolean":
            lowered = text.strip().lower()
            if lowered not in (CLI_TRUE, CLI_FALSE):
                errors.append((field, "invalid_type", "Must be true or false."))
                continue
            out[name] = lowered == CLI_TRUE
        elif type_ == "integer":
            if not INTEGER_LITERAL.match(text.strip()):
                errors.append((field, "invalid_type", "Must be an integer (digits with an optional sign)."))
                continue
            out[name] = int(text)
        elif type_ == "number":
            if not DECIMAL_LITERAL.match(text.strip()):
                errors.append((field, "invalid_type", "Must be a decimal number such as 2, -0.5 or 1e3."))
                continue
            out[name] = int(text) if INTEGER_LITERAL.match(text.strip()) else float(text)
        else:
            out[name] = text
    return out, errors


# --- Patterns -------------------------------------------------------------------------------------
def placeholders(text: str) -> list[str]:
    """The parameter names ``text`` uses as ``{{ name }}``, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER_RE.findall(text or "")))


def as_text(value: Any) -> str:
    """A value as it appears in a name or description (JSON spelling for booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_pattern(pattern: str, values: Mapping[str, Any]) -> str:
    """``{{ name }}`` in a name or description pattern replaced by the value (plain text)."""
    return PLACEHOLDER_RE.sub(lambda m: as_text(values.get(m.group(1))), pattern or "")


# --- Scripts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaceholderProblem:
    name: str
    line: int
    message: str


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def check_script(script: str, script_type: str, spec: list[Mapping[str, Any]]) -> list[PlaceholderProblem]:
    """Where ``script`` uses a placeholder in a place its quoted value could not be safe.

    A string or choice placeholder stands for one whole value: in bash a shell word (outside
    quotes, comments, here-documents, backticks, ``${…}`` and arithmetic), in Python an
    expression (outside string literals). Integer, number and boolean placeholders render
    as bare literals (digits, sign, point, exponent, true/false) and may stand anywhere, except
    right after ``$`` or ``\\`` in bash. Undeclared names are reported by the caller.
    """
    types = {item["name"]: ("text" if item.get("secret") else item.get("type")) for item in spec}
    if script_type == "bash":
        contexts = _bash_contexts(script)
    elif script_type == "python":
        contexts = _python_contexts(script)
    else:
        return []
    problems = []
    for match in PLACEHOLDER_RE.finditer(script):
        name = match.group(1)
        if name not in types:
            continue
        context = contexts.get(match.start(), "an escaped or unreadable position")
        text_like = types[name] in TEXT_TYPES or types[name] == "text"
        if context == "code":
            continue
        if not text_like and context not in ("a position right after $", "an escaped or unreadable position"):
            continue
        ph = "{{ " + name + " }}"
        if script_type == "bash":
            hint = (
                f'A bash placeholder stands for a whole shell word: write echo "Hello, "{ph} '
                f'or assign it first ({name}={ph}) and use "${name}".'
            )
        else:
            hint = (
                f"A Python placeholder stands for a value: write 'Hello, ' + {ph}, "
                f"or assign it first ({name} = {ph})."
            )
        line = _line_of(script, match.start())
        problems.append(PlaceholderProblem(name, line, f"{ph} on line {line} is inside {context}. {hint}"))
    if script_type == "bash":
        problems.extend(_bash_evaluation_problems(script, spec))
    return problems


def _bash_evaluation_problems(script: str, spec: list[Mapping[str, Any]]) -> list[PlaceholderProblem]:
    """String, choice and secret values that reach a place where bash evaluates text as an
    arithmetic expression, as code or as a variable name (see ``bash_taint``)."""
    items = {item["name"]: item for item in spec}
    text_like = {
        name for name, item in items.items() if item.get("secret") or item.get("type", "string") in TEXT_TYPES
    }
    if not text_like:
        return []

    def stand_in(match: re.Match[str]) -> str:
        name = match.group(1)
        keep_lines = "\n" * match.group(0).count("\n")
        item = items.get(name)
        if item is None:
            return match.group(0)
        if name in text_like:
            return f'"${{{env_name(name)}}}"' + keep_lines
        return ("true" if item.get("type") == "boolean" else "0") + keep_lines

    text = PLACEHOLDER_RE.sub(stand_in, script)
    seeds = {env_name(name): frozenset({name}) for name in text_like}
    found = []
    for problem in bash_taint.problems(text, seeds, direct=seeds):
        name, line = problem["name"], problem["line"]
        via = f" through ${problem['through']}" if problem["through"] else ""
        found.append(
            PlaceholderProblem(
                name,
                line,
                f"{{{{ {name} }}}} ({items[name].get('type', 'string')}"
                f"{', secret' if items[name].get('secret') else ''}) reaches {problem['construct']} "
                f"on line {line}{via}. Bash evaluates the text there (arithmetic operands, subscripts, "
                f"variable names, code), so a value such as a[$(id)] would run a command. Use an "
                f"integer or number parameter (validated as a number) for arithmetic, and keep "
                f"string values out of eval, source, declare -i/-a/-n, let and variable names.",
            )
        )
    return found


def render_script(
    script: str, script_type: str, spec: list[Mapping[str, Any]], values: Mapping[str, Any]
) -> str:
    """``script`` with each placeholder replaced by its value quoted for the language.

    bash: ``shlex.quote`` of the text (numbers and booleans bare); python: ``repr`` of the
    Python value (``None`` when an optional parameter is absent). Secret parameters are
    replaced by a reference to their environment variable, never by the value, so the stored
    script holds no secret. Call ``check_script`` first (the services do, on save).
    """
    items = {item["name"]: item for item in normalize_spec(spec)}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        item = items[name]
        value = values.get(name)
        if script_type == "bash":
            if item["secret"]:
                return f'"${{{env_name(name)}}}"'
            if isinstance(value, bool):
                return "true" if value else "false"
            if _is_number(value):
                return repr(value)
            return shlex.quote(as_text(value))
        if item["secret"]:
            if item["type"] in TEXT_TYPES:
                return f"__import__('os').environ[{env_name(name)!r}]"
            return f"__import__('json').loads(__import__('os').environ[{env_name(name)!r}])"
        return repr(value)

    return PLACEHOLDER_RE.sub(replace, script)


# --- bash: a conservative scanner of quoting contexts ---------------------------------------------
_BASH_METACHARS = set(" \t\n;&|()<>")
# What a placeholder standing in each scanner state is inside ("code": where a shell word may).
_BASH_PLACEHOLDER_CONTEXTS = {
    "top": "code",
    "cmd": "code",
    "dq": "a double-quoted string",
    "brace": "a ${…} expansion",
    "arith": "an arithmetic expression",
}
_HEREDOC_RE = re.compile(r"<<(-?)[ \t]*(['\"]?)([A-Za-z0-9_.-]+)\2")


@dataclass
class _BashFrame:
    """One nesting level: "top", "cmd" (``$(…)``), "dq", "brace" (``${…}``) or "arith"."""

    state: str
    depth: int = 0  # open parentheses within a cmd, top or arith level


class _BashScanner:
    """One scan of a bash script: a stack of frames and one step function per state.

    Each step reads the character at ``i`` and moves ``i`` on. ``lost`` is set where the
    scanner cannot be sure how bash reads the rest; every later placeholder is then refused.
    """

    def __init__(self, script: str) -> None:
        self.script = script
        self.n = len(script)
        self.spans = {m.start(): m.end() for m in PLACEHOLDER_RE.finditer(script)}
        self.found: dict[int, str] = {}
        self.stack = [_BashFrame("top")]
        self.heredocs: list[tuple[str, bool]] = []  # pending (delimiter, strip_tabs)
        self.lost = ""
        self.i = 0

    # --- the loop ---------------------------------------------------------------------------------
    def scan(self) -> dict[int, str]:
        steps = {
            "top": self._code,
            "cmd": self._code,
            "dq": self._double_quoted,
            "brace": self._brace,
            "arith": self._arithmetic,
        }
        while self.i < self.n and not self.lost:
            if self.i in self.spans:
                self._placeholder()
            else:
                steps[self.stack[-1].state](self.script[self.i])
        if self.lost:
            self._mark_range(self.i, self.n, f"a part of the script the checker cannot follow ({self.lost})")
        return self.found

    def _placeholder(self) -> None:
        """A placeholder where the scan stands: record the context and step over it."""
        if self.i and self.script[self.i - 1] == "$":
            context = "a position right after $"
        else:
            context = _BASH_PLACEHOLDER_CONTEXTS[self.stack[-1].state]
        self.found[self.i] = context
        self.i = self.spans[self.i]

    # --- small moves ------------------------------------------------------------------------------
    def _mark_range(self, first: int, stop: int, context: str) -> None:
        for pos in self.spans:
            if first <= pos < stop:
                self.found[pos] = context

    def _lose(self, reason: str) -> None:
        self.lost = f"{reason} on line {_line_of(self.script, self.i)}"

    def _push(self, state: str, width: int) -> None:
        self.stack.append(_BashFrame(state))
        self.i += width

    def _pop(self) -> None:
        self.stack.pop()

    def _after_metachar(self) -> bool:
        return self.i == 0 or self.script[self.i - 1] in _BASH_METACHARS

    def _expansion(self) -> bool:
        """Enter ``$((``, ``$(`` or ``${`` at ``i`` (not ``${{ placeholder }}``); False if none."""
        ahead = self.script[self.i + 1 : self.i + 3]
        if ahead == "((":
            self._push("arith", 3)
        elif ahead.startswith("("):
            self._push("cmd", 2)
        elif ahead.startswith("{") and self.i + 1 not in self.spans:
            self._push("brace", 2)
        else:
            return False
        return True

    # --- code: the top level and $(…) --------------------------------------------------------------
    def _code(self, c: str) -> None:
        step = {
            "\\": self._escape,
            "'": self._single_quote,
            '"': self._open_double_quote,
            "`": self._backticks,
            "#": self._comment,
            "$": self._dollar,
            "(": self._open_paren,
            ")": self._close_paren,
            "<": self._redirect,
            "\n": self._newline,
            "c": self._word_c,
        }.get(c)
        if step is None:
            self.i += 1
        else:
            step()

    def _escape(self) -> None:
        self.i += 2  # the escaped character (a placeholder there is never marked: refused)

    def _single_quote(self) -> None:
        end = self.script.find("'", self.i + 1)
        if end < 0:
            self.lost = "an unterminated single quote"
            return
        self._mark_range(self.i + 1, end, "a single-quoted string")
        self.i = end + 1

    def _open_double_quote(self) -> None:
        self._push("dq", 1)

    def _backticks(self) -> None:
        self._lose("backticks")

    def _comment(self) -> None:
        if not self._after_metachar():  # a # inside a word (a#b) is a letter
            self.i += 1
            return
        end = self.script.find("\n", self.i)
        end = self.n if end < 0 else end
        self._mark_range(self.i + 1, end, "a comment")
        self.i = end

    def _dollar(self) -> None:
        if self.script[self.i + 1 : self.i + 2] in ("'", '"'):
            self._lose("$-quoting")
        elif not self._expansion():
            self.i += 1

    def _open_paren(self) -> None:
        if self.script[self.i + 1 : self.i + 2] == "(" and self._after_metachar():
            self._push("arith", 2)
            return
        self.stack[-1].depth += 1
        self.i += 1

    def _close_paren(self) -> None:
        frame = self.stack[-1]
        if frame.depth > 0:
            frame.depth -= 1
        elif frame.state == "cmd":
            self._pop()
        self.i += 1

    def _redirect(self) -> None:
        if self.script[self.i : self.i + 2] != "<<" or self.script[self.i : self.i + 3] == "<<<":
            self.i += 1
            return
        match = _HEREDOC_RE.match(self.script, self.i)
        if not match:
            self._lose("a here-document")
            return
        self.heredocs.append((match.group(3), match.group(1) == "-"))
        self.i = match.end()

    def _newline(self) -> None:
        self.i += 1
        while self.heredocs:
            self._heredoc_body(*self.heredocs.pop(0))

    def _heredoc_body(self, delimiter: str, strip_tabs: bool) -> None:
        """Skip one here-document body and its delimiter line; placeholders in it are data."""
        start = self.i
        while self.i < self.n:
            end = self.script.find("\n", self.i)
            end = self.n if end < 0 else end
            line = self.script[self.i : end]
            if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                break
            self.i = end + 1
        self._mark_range(start, self.i, "a here-document")
        end = self.script.find("\n", self.i)
        self.i = self.n if end < 0 else end + 1

    def _word_c(self) -> None:
        """``case`` inside ``$(…)``: its ``)`` patterns would close the substitution."""
        if (
            self.stack[-1].state == "cmd"
            and self.script[self.i - 1] in _BASH_METACHARS
            and re.match(r"case\b", self.script[self.i : self.i + 5])
        ):
            self._lose("case inside $(…)")
        else:
            self.i += 1

    # --- "…" -------------------------------------------------------------------------------------
    def _double_quoted(self, c: str) -> None:
        if c == "\\":
            self.i += 2
        elif c == "`":
            self._lose("backticks")
        elif c == "$" and self._expansion():
            pass
        else:
            if c == '"':
                self._pop()
            self.i += 1

    # --- ${…} -------------------------------------------------------------------------------------
    def _brace(self, c: str) -> None:
        if c in "'\"`\\" or self.script[self.i : self.i + 2] == "$(":
            self._lose("quoting inside ${…}")
            return
        if c == "}":
            self._pop()
        self.i += 1

    # --- $((…)) and ((…)) -------------------------------------------------------------------------
    def _arithmetic(self, c: str) -> None:
        if c in "'\"`\\":
            self._lose("quoting inside arithmetic")
            return
        frame = self.stack[-1]
        if c == "(":
            frame.depth += 1
        elif c == ")" and frame.depth > 0:
            frame.depth -= 1
        elif c == ")" and self.script[self.i : self.i + 2] == "))":
            self._pop()
            self.i += 1
        self.i += 1


def _bash_contexts(script: str) -> dict[int, str]:
    """For each placeholder start, the bash context it is in: "code" when it stands where a
    shell word may, otherwise a description of the quoting around it.

    The scanner follows single and double quotes, backslashes, comments, ``$(…)`` (also
    inside double quotes), ``${…}``, arithmetic, here-documents and backticks. Where it cannot
    be sure how bash reads the rest (``$'…'``, backticks, ``case`` inside ``$(…)``, quotes
    inside ``${…}``), every later placeholder is reported as unreadable: refusing is safe.
    """
    return _BashScanner(script).scan()


# --- python: the tokenizer of the interpreter that runs the script decides ------------------------
# Run by that interpreter (``-I -S``: no site, no environment): it reads {"text", "marks"} on
# stdin and prints the tokens that overlap a mark. Tokenizing never runs the script.
_TOKENIZE_PROGRAM = """
import io, json, sys, tokenize
data = json.load(sys.stdin)
text, marks = data["text"], data["marks"]
starts = [0]
for line in text.split("\\n"):
    starts.append(starts[-1] + len(line) + 1)
out, error = [], None
try:
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        a = starts[tok.start[0] - 1] + tok.start[1]
        b = starts[tok.end[0] - 1] + tok.end[1]
        if tok.type == tokenize.ERRORTOKEN:  # up to 3.11 tokenize goes on past an error
            raise SyntaxError("unreadable %r on line %d" % (tok.string, tok.start[0]))
        hit = [m for m in marks if a <= m < b]
        if hit:
            out.append([tokenize.tok_name[tok.type], a, b, tok.string])
except Exception as exc:
    error = "%s: %s" % (type(exc).__name__, exc.args[0] if exc.args else exc)
json.dump({"version": "%d.%d" % sys.version_info[:2], "tokens": out, "error": error}, sys.stdout)
"""
TOKENIZE_TIMEOUT_SECONDS = 10


def script_python() -> tuple[str | None, str]:
    """The interpreter that runs python scripts, as the sandbox finds it: ``(path, name)``;
    the path is None when it is not there (``TASKFORGE_SCRIPT_PYTHON`` on the sandbox PATH)."""
    import shutil

    config = SandboxConfig.from_settings()
    return shutil.which(config.python, path=config.path), config.python


@functools.lru_cache(maxsize=256)
def _python_tokens(interpreter: str, payload: str) -> tuple[str, tuple[tuple[str, int, int, str], ...], str]:
    """``(version, tokens over a mark, error)`` from ``interpreter`` (cached: a script's
    placeholders are checked on save and again on each execution)."""
    import subprocess

    try:
        result = subprocess.run(
            [interpreter, "-I", "-S", "-c", _TOKENIZE_PROGRAM],
            input=payload.encode("utf-8", "surrogatepass"),
            capture_output=True,
            timeout=TOKENIZE_TIMEOUT_SECONDS,
            env={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
            check=False,
        )
        answer = json.loads(result.stdout.decode())
    except (OSError, subprocess.SubprocessError, ValueError, UnicodeDecodeError) as exc:
        return "", (), f"{interpreter} could not tokenize it ({type(exc).__name__})"
    tokens = tuple((str(t[0]), int(t[1]), int(t[2]), str(t[3])) for t in answer.get("tokens", ()))
    return str(answer.get("version", "")), tokens, answer.get("error") or ""


def _python_contexts(script: str) -> dict[int, str]:
    """For each placeholder start: "code" when it is a token of its own, else where it is.

    The tokens come from the interpreter that runs the script (``script_python``), not the
    worker's: f-strings, for one, tokenize differently before and after Python 3.12. When that
    interpreter cannot be run, every placeholder is refused.
    """
    matches = list(PLACEHOLDER_RE.finditer(script))
    if not matches:
        return {}
    # Each placeholder becomes an identifier; sentinels maps its offset in the masked text
    # to the placeholder's offset in the script.
    sentinels: dict[int, tuple[str, int]] = {}
    parts, last, length = [], 0, 0
    for index, match in enumerate(matches):
        token = f"__taskforge_placeholder_{index}__"
        parts.append(script[last : match.start()])
        length += match.start() - last
        sentinels[length] = (token, match.start())
        parts.append(token)
        length += len(token)
        last = match.end()
    parts.append(script[last:])
    masked = "".join(parts)
    interpreter, name = script_python()
    if interpreter is None:
        reason = f"a script the checker cannot read ({name} not found: set TASKFORGE_SCRIPT_PYTHON)"
        return {pos: reason for _token, pos in sentinels.values()}
    payload = json.dumps({"text": masked, "marks": sorted(sentinels)}, ensure_ascii=False)
    version, tokens, error = _python_tokens(interpreter, payload)
    found: dict[int, str] = {}
    for type_, start, end, text in tokens:
        for at, (token, pos) in sentinels.items():
            if not start <= at < end or pos in found:
                continue
            if type_ == "NAME" and text == token:
                found[pos] = "code"
            elif type_ == "COMMENT":
                found[pos] = "code"  # repr() has no newline: it cannot leave the comment
            elif type_ in ("STRING", "FSTRING_MIDDLE", "TSTRING_MIDDLE"):
                found[pos] = f"a string literal (Python {version})"
            else:
                found[pos] = "a token it is glued to"
    if error:
        for _token, pos in sentinels.values():
            found.setdefault(pos, f"a script Python {version} cannot tokenize ({error})".replace("  ", " "))
    for _token, pos in sentinels.values():
        found.setdefault(pos, "a script the checker cannot read")
    return found


def json_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- One run of a templated task ------------------------------------------------------------------
def as_validation_error(errors: Errors) -> Any:
    """``errors`` as one Django ValidationError keyed by field, codes kept (one 400)."""
    from django.core.exceptions import ValidationError

    by_field: dict[str, list[ValidationError]] = {}
    for field, code, message in errors:
        by_field.setdefault(field, []).append(ValidationError(message, code=code))
    return ValidationError(by_field)


def script_errors(script: str, script_type: str, spec: list[Mapping[str, Any]], field: str) -> Errors:
    """Undeclared and unsafely placed placeholders of ``script``, as errors on ``field``."""
    declared = {item["name"] for item in spec}
    errors: Errors = []
    for name in placeholders(script):
        if name not in declared:
            errors.append(
                (
                    field,
                    "undeclared_placeholder",
                    f"{{{{ {name} }}}} is not a declared parameter "
                    f"(declared: {', '.join(sorted(declared)) or 'none'}).",
                )
            )
    if script and placeholders(script) and script_type not in ("bash", "python"):
        errors.append((field, "script_type_required", "A script with placeholders needs a script_type."))
    for problem in check_script(script, script_type, spec):
        errors.append((field, "unsafe_placeholder", problem.message))
    return errors


def script_digest(script_type: str, script: str, spec: list[Mapping[str, Any]]) -> str:
    """What a task records of the script its template rendered: a sha256 of the script type,
    the script and the declarations. A secret is only handed to a script that still has it."""
    import hashlib

    canonical = json.dumps([script_type, script, list(spec)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def prepare_run(
    *,
    spec: list[Mapping[str, Any]],
    script: str,
    script_type: str,
    stored: Mapping[str, Any],
    given: Mapping[str, Any],
    digest: str | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """What one execution of a templated task runs: ``(script, shown values, secret values)``.

    The task's stored values (secret values are never stored; references to project secrets
    are) are the base; ``given`` overrides
    them. Raises a ValidationError naming every bad parameter. With ``digest`` (the task's
    ``script_digest``), a secret value is refused unless the script, its type and the
    declarations are still exactly what the template rendered.
    """
    secret_names = {item["name"] for item in spec if item.get("secret")}
    # Stored secret values are never kept, but references to project secrets are.
    values = {**{k: v for k, v in stored.items() if k not in secret_names or is_secret_ref(v)}, **given}
    given_secrets = sorted(name for name in secret_names if values.get(name) is not None)
    if digest is not None and given_secrets and digest != script_digest(script_type, script, spec):
        raise as_validation_error(
            [
                (
                    f"parameters.{name}",
                    "script_changed",
                    "This task's script is no longer the one its template rendered, so it is "
                    "not given secrets. Trigger the template again to run its script.",
                )
                for name in given_secrets
            ]
        )
    clean, errors = validate(spec, values)
    if errors:
        raise as_validation_error(errors)
    return render_run(spec=spec, script=script, script_type=script_type, clean=clean)


def render_run(
    *, spec: list[Mapping[str, Any]], script: str, script_type: str, clean: Mapping[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(script, shown values, secret values)`` for values ``validate`` has accepted already:
    the script checked for unsafe placeholders, rendered, and the secrets split out."""
    problems = script_errors(script, script_type, spec, "script_content")
    if problems:
        raise as_validation_error(problems)
    rendered = render_script(script, script_type, spec, clean) if script else script
    shown, secrets = split_secrets(spec, clean)
    return rendered, shown, secrets
