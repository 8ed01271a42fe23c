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

# --- Limits and vocabulary ------------------------------------------------------------------------
PARAMETERS_MAX = 50
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
VALUE_MAX_CHARS = 65_536
CHOICES_MAX = 200
DESCRIPTION_MAX = 1000
PATTERN_MAX = 500
MASK = "***"
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
    seen: dict[str, int] = {}
    for index, raw in enumerate(spec):
        at = f"parameters[{index}]"

        def err(key: str, code: str, message: str, at: str = at) -> None:
            errors.append((f"{at}.{key}" if key else at, code, message))

        if not isinstance(raw, Mapping):
            err("", "invalid", "Each parameter is an object.")
            continue
        unknown = sorted(set(raw) - set(KNOWN_KEYS))
        if unknown:
            err(unknown[0], "unknown_key", f"Unknown key {unknown[0]!r}; allowed: {', '.join(KNOWN_KEYS)}.")
        item = normalize_spec([raw])[0]
        name, type_ = item["name"], item["type"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            err("name", "invalid_name", "A name is 1-64 of A-Z a-z 0-9 _, not starting with a digit.")
        else:
            folded = name.upper()
            if folded in seen:
                err("name", "duplicate", f"{name!r} is declared twice (names are compared ignoring case).")
            seen[folded] = index
        if type_ not in TYPES:
            err("type", "invalid_choice", f"Unknown type {type_!r}; one of {', '.join(TYPES)}.")
            continue
        for key in ("required", "secret"):
            if key in raw and not isinstance(raw[key], bool):
                err(key, "invalid", "Must be true or false.")
        if not isinstance(item["description"], str) or len(item["description"]) > DESCRIPTION_MAX:
            err("description", "invalid", f"A string of at most {DESCRIPTION_MAX} characters.")
        # Rules that only make sense for some types.
        choices = item["choices"]
        if type_ == "choice":
            if not choices:
                err("choices", "required", "A choice parameter needs a non-empty list of choices.")
            elif len(choices) > CHOICES_MAX:
                err("choices", "max_items", f"At most {CHOICES_MAX} choices.")
            elif not all(isinstance(c, str) and c for c in choices):
                err("choices", "invalid", "Choices are non-empty strings.")
            elif len(set(choices)) != len(choices):
                err("choices", "duplicate", "Choices must be distinct.")
        elif choices is not None:
            err("choices", "not_allowed", "Only choice parameters have choices.")
        for key in ("min", "max"):
            bound = item[key]
            if bound is None:
                continue
            if type_ not in ("integer", "number"):
                err(key, "not_allowed", f"{key} applies to integer and number parameters only.")
            elif not (_is_int(bound) if type_ == "integer" else _is_number(bound)):
                err(key, "invalid", f"Must be {'an integer' if type_ == 'integer' else 'a number'}.")
        if _is_number(item["min"]) and _is_number(item["max"]) and item["min"] > item["max"]:
            err("min", "invalid", "min is greater than max.")
        for key in ("min_length", "max_length"):
            bound = item[key]
            if bound is None:
                continue
            if type_ != "string":
                err(key, "not_allowed", f"{key} applies to string parameters only.")
            elif not _is_int(bound) or not 0 <= bound <= VALUE_MAX_CHARS:
                err(key, "invalid", f"Must be an integer from 0 to {VALUE_MAX_CHARS}.")
        if (
            _is_int(item["min_length"])
            and _is_int(item["max_length"])
            and item["min_length"] > item["max_length"]
        ):
            err("min_length", "invalid", "min_length is greater than max_length.")
        pattern = item["pattern"]
        if pattern:
            if type_ != "string":
                err("pattern", "not_allowed", "pattern applies to string parameters only.")
            elif not isinstance(pattern, str) or len(pattern) > PATTERN_MAX:
                err("pattern", "invalid", f"A regular expression of at most {PATTERN_MAX} characters.")
            else:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    err("pattern", "invalid_pattern", f"Not a valid regular expression: {exc}.")
        default = item["default"]
        if default is not None:
            if item["secret"]:
                # A default would be stored on the template and shown by the API and the admin.
                err("default", "not_allowed", "A secret parameter cannot have a default.")
            elif not any(e[0].startswith(at) for e in errors):
                problem = check_value(item, default)
                if problem is not None:
                    err("default", problem[0], f"The default breaks its own rules: {problem[1]}")
    return errors


# --- Values ---------------------------------------------------------------------------------------
def check_value(item: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """``(code, message)`` when ``value`` breaks the declaration ``item``, else None.

    Messages never quote the value (it may be a secret).
    """
    type_ = item["type"]
    if type_ in TEXT_TYPES:
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
        if type_ == "choice":
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
    if type_ == "boolean":
        if not isinstance(value, bool):
            return "invalid_type", f"Must be a boolean (JSON true or false), got {_type_label(value)}."
        return None
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
        problem = check_value(item, value)
        if problem is not None:
            errors.append((f"parameters.{name}", *problem))
        else:
            clean[name] = value
    return clean, errors


def split_secrets(spec: list[Mapping[str, Any]], clean: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(shown, secret)``: the values with secrets masked as ``***``, and the secret values."""
    secret_names = {item["name"] for item in spec if item.get("secret")}
    shown = {name: (MASK if name in secret_names else value) for name, value in clean.items()}
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
    from templates_app import bash_taint

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


def _bash_contexts(script: str) -> dict[int, str]:
    """For each placeholder start, the bash context it is in: "code" when it stands where a
    shell word may, otherwise a description of the quoting around it.

    The scanner follows single and double quotes, backslashes, comments, ``$(…)`` (also
    inside double quotes), ``${…}``, arithmetic, here-documents and backticks. Where it cannot
    be sure how bash reads the rest (``$'…'``, backticks, ``case`` inside ``$(…)``, quotes
    inside ``${…}``), every later placeholder is reported as unreadable: refusing is safe.
    """
    spans = {m.start(): m.end() for m in PLACEHOLDER_RE.finditer(script)}
    found: dict[int, str] = {}
    # stack of contexts: "top", "cmd" ($(…)), "dq", "brace" (${…}), "arith"
    stack: list[str] = ["top"]
    depth: list[int] = [0]  # paren depth within each cmd/arith level
    heredocs: list[tuple[str, bool]] = []  # pending (delimiter, strip_tabs)
    lost = ""
    i, n = 0, len(script)

    def mark(pos: int, context: str) -> int:
        found[pos] = context
        return spans[pos]

    while i < n:
        if i in spans:
            if lost:
                found[i] = f"a part of the script the checker cannot follow ({lost})"
                i = spans[i]
                continue
            state = stack[-1]
            previous = script[i - 1] if i else ""
            if previous == "$":
                i = mark(i, "a position right after $")
                continue
            if state in ("top", "cmd"):
                i = mark(i, "code")
            elif state == "dq":
                i = mark(i, "a double-quoted string")
            elif state == "brace":
                i = mark(i, "a ${…} expansion")
            else:
                i = mark(i, "an arithmetic expression")
            continue
        c = script[i]
        state = stack[-1]
        if lost:
            i += 1
            continue
        if state in ("top", "cmd"):
            if c == "\\":
                i += 2  # the escaped character (a placeholder there is never marked: refused)
                continue
            if c == "'":
                end = script.find("'", i + 1)
                if end < 0:
                    lost = "an unterminated single quote"
                    continue
                for pos in spans:
                    if i < pos < end:
                        found[pos] = "a single-quoted string"
                i = end + 1
                continue
            if c == '"':
                stack.append("dq")
                depth.append(0)
                i += 1
                continue
            if c == "`":
                lost = f"backticks on line {_line_of(script, i)}"
                continue
            if c == "#" and (i == 0 or script[i - 1] in _BASH_METACHARS):
                end = script.find("\n", i)
                end = n if end < 0 else end
                for pos in spans:
                    if i < pos < end:
                        found[pos] = "a comment"
                i = end
                continue
            if c == "$":
                nxt = script[i + 1 : i + 3]
                if nxt.startswith(("'", '"')):
                    lost = f"$-quoting on line {_line_of(script, i)}"
                    continue
                if nxt == "((":
                    stack.append("arith")
                    depth.append(0)
                    i += 3
                    continue
                if nxt.startswith("("):
                    stack.append("cmd")
                    depth.append(0)
                    i += 2
                    continue
                if nxt.startswith("{") and i + 1 not in spans:
                    stack.append("brace")
                    depth.append(0)
                    i += 2
                    continue
                i += 1
                continue
            if c == "(" and script[i + 1 : i + 2] == "(" and (i == 0 or script[i - 1] in _BASH_METACHARS):
                stack.append("arith")
                depth.append(0)
                i += 2
                continue
            if c == "(":
                depth[-1] += 1
            elif c == ")":
                if depth[-1] > 0:
                    depth[-1] -= 1
                elif state == "cmd":
                    stack.pop()
                    depth.pop()
            elif c == "<" and script[i : i + 2] == "<<" and script[i : i + 3] != "<<<":
                match = re.match(r"<<(-?)[ \t]*(['\"]?)([A-Za-z0-9_.-]+)\2", script[i:])
                if not match:
                    lost = f"a here-document on line {_line_of(script, i)}"
                    continue
                heredocs.append((match.group(3), match.group(1) == "-"))
                i += match.end()
                continue
            elif c == "\n" and heredocs:
                i += 1
                while heredocs:
                    delimiter, strip = heredocs.pop(0)
                    start = i
                    while i < n:
                        end = script.find("\n", i)
                        end = n if end < 0 else end
                        line = script[i:end]
                        if (line.lstrip("\t") if strip else line) == delimiter:
                            break
                        i = end + 1
                    for pos in spans:
                        if start <= pos < i:
                            found[pos] = "a here-document"
                    end = script.find("\n", i)
                    i = n if end < 0 else end + 1
                continue
            elif (
                c == "c"
                and state == "cmd"
                and script[i - 1] in _BASH_METACHARS
                and re.match(r"case\b", script[i : i + 5])
            ):
                lost = f"case inside $(…) on line {_line_of(script, i)}"
                continue
            i += 1
            continue
        if state == "dq":
            if c == "\\":
                i += 2
                continue
            if c == '"':
                stack.pop()
                depth.pop()
            elif c == "`":
                lost = f"backticks on line {_line_of(script, i)}"
                continue
            elif c == "$" and script[i + 1 : i + 3] == "((":
                stack.append("arith")
                depth.append(0)
                i += 3
                continue
            elif c == "$" and script[i + 1 : i + 2] == "(":
                stack.append("cmd")
                depth.append(0)
                i += 2
                continue
            elif c == "$" and script[i + 1 : i + 2] == "{" and i + 1 not in spans:
                stack.append("brace")
                depth.append(0)
                i += 2
                continue
            i += 1
            continue
        if state == "brace":
            if c in "'\"`\\" or script[i : i + 2] == "$(":
                lost = f"quoting inside ${{…}} on line {_line_of(script, i)}"
                continue
            if c == "}":
                stack.pop()
                depth.pop()
            i += 1
            continue
        # arithmetic
        if c in "'\"`\\":
            lost = f"quoting inside arithmetic on line {_line_of(script, i)}"
            continue
        if c == "(":
            depth[-1] += 1
        elif c == ")":
            if depth[-1] > 0:
                depth[-1] -= 1
            elif script[i : i + 2] == "))":
                stack.pop()
                depth.pop()
                i += 2
                continue
        i += 1
    return found


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

    from executions.engine.sandbox import SandboxConfig

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

    The task's stored values (secrets are never stored) are the base; ``given`` overrides
    them. Raises a ValidationError naming every bad parameter. With ``digest`` (the task's
    ``script_digest``), a secret value is refused unless the script, its type and the
    declarations are still exactly what the template rendered.
    """
    secret_names = {item["name"] for item in spec if item.get("secret")}
    given_secrets = sorted(name for name in secret_names if given.get(name) is not None)
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
    values = {**{k: v for k, v in stored.items() if k not in secret_names}, **given}
    clean, errors = validate(spec, values)
    if errors:
        raise as_validation_error(errors)
    problems = script_errors(script, script_type, spec, "script_content")
    if problems:
        raise as_validation_error(problems)
    rendered = render_script(script, script_type, spec, clean) if script else script
    shown, secrets = split_secrets(spec, clean)
    return rendered, shown, secrets
