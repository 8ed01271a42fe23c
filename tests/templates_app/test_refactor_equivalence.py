"""The split of the placeholder-context lexer and the declaration checks changed no behaviour.

The functions as they were before the split (``4943f5d``-era ``parameters.py``) are frozen
below, verbatim but for their names and the ``p.`` prefix, and compared with the current ones
on the scripts and declarations of the other tests plus generated ones. Each context of the
new scanner is also reached by a targeted case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templates_app import bash_taint
from templates_app import parameters as p

# The suite-wide cache fixture touches the database cache.
pytestmark = pytest.mark.django_db


# --- Frozen copies of the functions before the split ----------------------------------------------
def old_bash_contexts(script: str) -> dict[int, str]:
    """For each placeholder start, the bash context it is in: "code" when it stands where a
    shell word may, otherwise a description of the quoting around it.

    The scanner follows single and double quotes, backslashes, comments, ``$(…)`` (also
    inside double quotes), ``${…}``, arithmetic, here-documents and backticks. Where it cannot
    be sure how bash reads the rest (``$'…'``, backticks, ``case`` inside ``$(…)``, quotes
    inside ``${…}``), every later placeholder is reported as unreadable: refusing is safe.
    """
    spans = {m.start(): m.end() for m in p.PLACEHOLDER_RE.finditer(script)}
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
                lost = f"backticks on line {p._line_of(script, i)}"
                continue
            if c == "#" and (i == 0 or script[i - 1] in p._BASH_METACHARS):
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
                    lost = f"$-quoting on line {p._line_of(script, i)}"
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
            if c == "(" and script[i + 1 : i + 2] == "(" and (i == 0 or script[i - 1] in p._BASH_METACHARS):
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
                    lost = f"a here-document on line {p._line_of(script, i)}"
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
                and script[i - 1] in p._BASH_METACHARS
                and re.match(r"case\b", script[i : i + 5])
            ):
                lost = f"case inside $(…) on line {p._line_of(script, i)}"
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
                lost = f"backticks on line {p._line_of(script, i)}"
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
                lost = f"quoting inside ${{…}} on line {p._line_of(script, i)}"
                continue
            if c == "}":
                stack.pop()
                depth.pop()
            i += 1
            continue
        # arithmetic
        if c in "'\"`\\":
            lost = f"quoting inside arithmetic on line {p._line_of(script, i)}"
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


def old_check_value(item: Mapping[str, Any], value: Any) -> tuple[str, str] | None:
    """``(code, message)`` when ``value`` breaks the declaration ``item``, else None.

    Messages never quote the value (it may be a secret).
    """
    type_ = item["type"]
    if type_ in p.TEXT_TYPES:
        if not isinstance(value, str):
            return "invalid_type", f"Must be a string, got {p._type_label(value)}."
        if "\x00" in value:
            return "invalid", "Must not contain NUL characters."
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid", "Must be valid Unicode (no lone surrogates)."
        if len(value) > p.VALUE_MAX_CHARS:
            return "max_length", f"At most {p.VALUE_MAX_CHARS} characters."
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
            return "invalid_type", f"Must be a boolean (JSON true or false), got {p._type_label(value)}."
        return None
    if type_ == "integer" and not p._is_int(value):
        return "invalid_type", f"Must be an integer, got {p._type_label(value)}."
    if type_ == "number" and not p._is_number(value):
        return "invalid_type", f"Must be a finite number, got {p._type_label(value)}."
    if item.get("min") is not None and value < item["min"]:
        return "min_value", f"Must be at least {item['min']}."
    if item.get("max") is not None and value > item["max"]:
        return "max_value", f"Must be at most {item['max']}."
    return None


def old_validate_spec(spec: list[Mapping[str, Any]]) -> p.Errors:
    """Problems with a template's parameter declarations, as ``(field, code, message)``.

    ``field`` is ``parameters[<index>].<key>``.
    """
    errors: p.Errors = []
    if len(spec) > p.PARAMETERS_MAX:
        errors.append(("parameters", "max_items", f"At most {p.PARAMETERS_MAX} parameters."))
    seen: dict[str, int] = {}
    for index, raw in enumerate(spec):
        at = f"parameters[{index}]"

        def err(key: str, code: str, message: str, at: str = at) -> None:
            errors.append((f"{at}.{key}" if key else at, code, message))

        if not isinstance(raw, Mapping):
            err("", "invalid", "Each parameter is an object.")
            continue
        unknown = sorted(set(raw) - set(p.KNOWN_KEYS))
        if unknown:
            err(unknown[0], "unknown_key", f"Unknown key {unknown[0]!r}; allowed: {', '.join(p.KNOWN_KEYS)}.")
        item = p.normalize_spec([raw])[0]
        name, type_ = item["name"], item["type"]
        if not isinstance(name, str) or not p.NAME_RE.match(name):
            err("name", "invalid_name", "A name is 1-64 of A-Z a-z 0-9 _, not starting with a digit.")
        else:
            folded = name.upper()
            if folded in seen:
                err("name", "duplicate", f"{name!r} is declared twice (names are compared ignoring case).")
            seen[folded] = index
        if type_ not in p.TYPES:
            err("type", "invalid_choice", f"Unknown type {type_!r}; one of {', '.join(p.TYPES)}.")
            continue
        for key in ("required", "secret"):
            if key in raw and not isinstance(raw[key], bool):
                err(key, "invalid", "Must be true or false.")
        if not isinstance(item["description"], str) or len(item["description"]) > p.DESCRIPTION_MAX:
            err("description", "invalid", f"A string of at most {p.DESCRIPTION_MAX} characters.")
        # Rules that only make sense for some types.
        choices = item["choices"]
        if type_ == "choice":
            if not choices:
                err("choices", "required", "A choice parameter needs a non-empty list of choices.")
            elif len(choices) > p.CHOICES_MAX:
                err("choices", "max_items", f"At most {p.CHOICES_MAX} choices.")
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
            elif not (p._is_int(bound) if type_ == "integer" else p._is_number(bound)):
                err(key, "invalid", f"Must be {'an integer' if type_ == 'integer' else 'a number'}.")
        if p._is_number(item["min"]) and p._is_number(item["max"]) and item["min"] > item["max"]:
            err("min", "invalid", "min is greater than max.")
        for key in ("min_length", "max_length"):
            bound = item[key]
            if bound is None:
                continue
            if type_ != "string":
                err(key, "not_allowed", f"{key} applies to string parameters only.")
            elif not p._is_int(bound) or not 0 <= bound <= p.VALUE_MAX_CHARS:
                err(key, "invalid", f"Must be an integer from 0 to {p.VALUE_MAX_CHARS}.")
        if (
            p._is_int(item["min_length"])
            and p._is_int(item["max_length"])
            and item["min_length"] > item["max_length"]
        ):
            err("min_length", "invalid", "min_length is greater than max_length.")
        pattern = item["pattern"]
        if pattern:
            if type_ != "string":
                err("pattern", "not_allowed", "pattern applies to string parameters only.")
            elif not isinstance(pattern, str) or len(pattern) > p.PATTERN_MAX:
                err("pattern", "invalid", f"A regular expression of at most {p.PATTERN_MAX} characters.")
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
                problem = old_check_value(item, default)
                if problem is not None:
                    err("default", problem[0], f"The default breaks its own rules: {problem[1]}")
    return errors


# --- bash contexts: the same on a corpus and on generated scripts ---------------------------------
CORPUS = [
    "echo {{ v }}",
    'x={{ v }}; echo "$x"',
    "echo $(printf %s {{ v }})",
    'echo "$(printf %s {{ v }})"',
    "echo 'a' {{ v }} \"b\"",
    "f() { echo {{ v }}; }",
    "cat <<EOF\nhello\nEOF\necho {{ v }}",
    "echo a#b {{ v }}",
    "echo {{ n }} '{{ n }}' \"{{ n }}\" $(( {{ n }} + 1 )) # {{ n }}",
    'echo "{{ v }}"',
    "echo '{{ v }}'",
    "# {{ v }}",
    "echo hi # {{ v }}",
    "echo `echo {{ v }}`",
    "echo `date`; echo {{ v }}",
    "echo \\{{ v }}",
    "echo ${{ v }}",
    "echo ${x:-{{ v }}}",
    "echo $(( {{ v }} ))",
    "cat <<'EOF'\n{{ v }}\nEOF",
    "cat <<-EOF\n\t{{ v }}\n\tEOF",
    "echo $'\\'' {{ v }}",
    'echo "$(case a in a) echo x;; esac)" {{ v }}',
    "echo ${{ n }}",
    "(( {{ n }} + 1 )); echo {{ v }}",
    "echo 'open {{ v }}",
    'cat <<<{{ v }}; cat << "E"\n{{ v }}\nE\n{{ v }}',
    "cat <<EOF; cat <<X\n{{ v }}\nEOF\n{{ v }}\nX\necho {{ v }}",
    "cat <<EOF\n{{ v }}",
    "cat << {{ v }}",
    'echo "${x}" "${{ v }}" "$(( 1 ))" "\\"{{ v }}" {{ v }}',
    "echo ${x'{{ v }}'} {{ v }}",
    "echo ${x$(id)} {{ v }}",
    "echo $(( (1) + ')' )) {{ v }}",
    "echo $(( (1) ) {{ v }} ))",
    "echo $(echo (a) ) {{ v }} ) {{ v }}",
    "echo $(echo x; case y in y) ;; esac) {{ v }}",
    "echo $(ecase) {{ v }}",
    '"`{{ v }}`"',
    "a((b)) {{ v }}",
    "$(\\{{ case }}) {{ v }}",
]
PIECES = [
    "'",
    '"',
    "\\",
    "`",
    "$",
    "(",
    ")",
    "((",
    "))",
    "{",
    "}",
    "${",
    "$(",
    "$((",
    "$'",
    '$"',
    "#",
    "\n",
    " ",
    "\t",
    ";",
    "|",
    "<",
    "<<",
    "<<<",
    "<<EOF",
    "<<-EOF",
    "<<'EOF'",
    '<< "X"',
    "EOF",
    "\tEOF",
    "X",
    "case ",
    "c",
    "a",
    "x=",
    "echo ",
    "{{ v }}",
    "{{ n }}",
    "{{v}}",
]
SCRIPTS = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@pytest.mark.parametrize("script", CORPUS)
def test_the_scanner_reads_the_corpus_as_before(script):
    assert p._bash_contexts(script) == old_bash_contexts(script)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=SCRIPTS)
def test_the_scanner_reads_generated_scripts_as_before(script):
    assert p._bash_contexts(script) == old_bash_contexts(script)


@settings(max_examples=500, deadline=None)
@given(script=st.text(alphabet="'\"\\`$(){}#\n <-;|cEOF{{ v }}", max_size=60))
def test_the_scanner_reads_random_text_as_before(script):
    assert p._bash_contexts(script) == old_bash_contexts(script)


# --- one case per context of the scanner ---------------------------------------------------------
@pytest.mark.parametrize(
    ("script", "context"),
    [
        ("echo {{ v }}", "code"),  # top
        ("echo $(echo {{ v }})", "code"),  # cmd
        ('echo "$(echo {{ v }})"', "code"),  # cmd inside dq
        ('echo "{{ v }}"', "a double-quoted string"),  # dq
        ("echo ${x:-{{ v }}}", "a ${…} expansion"),  # brace
        ('echo "${x:-{{ v }}}"', "a ${…} expansion"),  # brace inside dq
        ("echo $(( {{ v }} ))", "an arithmetic expression"),  # arith
        ("(( {{ v }} ))", "an arithmetic expression"),  # arith command
        ('echo "$(( {{ v }} ))"', "an arithmetic expression"),  # arith inside dq
        ("echo $(( ( {{ v }} ) ))", "an arithmetic expression"),  # nested parens
        ("echo $(( 1 ) {{ v }} ))", "an arithmetic expression"),  # a lone ) does not close
        ("echo ${{ v }}", "a position right after $"),
        ('echo "${{ v }}"', "a position right after $"),
        ("echo '{{ v }}'", "a single-quoted string"),
        ("# {{ v }}", "a comment"),
        ("echo a#{{ v }}", "code"),  # # inside a word
        ("cat <<EOF\n{{ v }}\nEOF", "a here-document"),
        ("cat <<-EOF\n\t{{ v }}\n\tEOF", "a here-document"),
        ("cat <<EOF\nEOF\necho {{ v }}", "code"),  # after the delimiter
        ("cat <<<x {{ v }}", "code"),  # a here-string is not a here-document
        ("echo $(echo (x)) {{ v }}", "code"),  # balanced parens inside $(…)
        ("echo ) {{ v }}", "code"),  # a stray ) at the top level
    ],
)
def test_each_context(script, context):
    contexts = p._bash_contexts(script)
    assert contexts[script.rindex("{{")] == context


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("echo 'x {{ v }}", "an unterminated single quote"),
        ("echo `x` {{ v }}", "backticks on line 1"),
        ('echo "`x`" {{ v }}', "backticks on line 1"),
        ("echo $'x' {{ v }}", "$-quoting on line 1"),
        ('\necho $"x" {{ v }}', "$-quoting on line 2"),
        ("cat << 'E {{ v }}", "a here-document on line 1"),
        ("echo $(x; case y in y) ;; esac) {{ v }}", "case inside $(…) on line 1"),
        ("echo ${x'y'} {{ v }}", "quoting inside ${…} on line 1"),
        ("echo ${x$(y)} {{ v }}", "quoting inside ${…} on line 1"),
        ("echo $(( '1' )) {{ v }}", "quoting inside arithmetic on line 1"),
    ],
)
def test_each_reason_to_give_up(script, reason):
    contexts = p._bash_contexts(script)
    assert contexts[script.rindex("{{")] == f"a part of the script the checker cannot follow ({reason})"


def test_an_escaped_placeholder_is_never_marked():
    assert p._bash_contexts("echo \\{{ v }}") == {}
    assert p._bash_contexts('echo "\\{{ v }}"') == {}


# --- declarations: the same errors, in the same order --------------------------------------------
def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    """What ``function`` returns, or the type of what it raises (``choices: true`` raises
    TypeError in normalize_spec, before and after the split alike)."""
    try:
        return "returns", function(*args)
    except Exception as exc:  # the comparison is the point
        return "raises", type(exc).__name__


VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        3,
        2.5,
        float("nan"),
        70_000,
        "",
        "a",
        "A",
        "b",
        "1x",
        "red",
        "(",
        "[a-z]+",
        "x" * 501,
        "d" * 1001,
        "string",
        "integer",
        "number",
        "boolean",
        "choice",
        "date",
        ["red", "blue"],
        ["a", "a"],
        [],
        [""],
        [1],
        ["x"] * 201,
        {"k": 1},
    ]
)
KEYS = st.sampled_from([*p.KNOWN_KEYS, "bogus"])
DECLARATION = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=6),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "A", "b", "1x"]),
            "type": st.sampled_from([*p.TYPES, "date"]),
        },
        optional={key: VALUES for key in p.KNOWN_KEYS if key not in ("name", "type")},
    ),
    st.sampled_from(["not an object", 1, None]),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(DECLARATION, max_size=4))
def test_validate_spec_reports_as_before(spec):
    assert outcome(p.validate_spec, spec) == outcome(old_validate_spec, spec)


@settings(max_examples=1000, deadline=None)
@given(
    item=st.fixed_dictionaries(
        {"type": st.sampled_from(p.TYPES)},
        optional=dict.fromkeys(("choices", "min", "max", "min_length", "max_length"), VALUES),
    ),
    value=VALUES,
)
def test_check_value_reports_as_before(item, value):
    item = {**item, "choices": item.get("choices") or ["red"], "pattern": "[a-z]*"}
    for key in ("min", "max", "min_length", "max_length"):
        if not p._is_number(item.get(key)):
            item[key] = None
    assert outcome(p.check_value, item, value) == outcome(old_check_value, item, value)


def test_too_many_declarations_and_every_rule_of_one():
    spec = [{"name": f"p{i}"} for i in range(p.PARAMETERS_MAX + 1)]
    assert p.validate_spec(spec)[0] == ("parameters", "max_items", "At most 50 parameters.")
    assert p.validate_spec(spec) == old_validate_spec(spec)


@pytest.mark.parametrize(
    ("declaration", "field", "code"),
    [
        ("x", "parameters[0]", "invalid"),
        ({"name": "a", "required": "yes"}, "parameters[0].required", "invalid"),
        ({"name": "a", "secret": 1}, "parameters[0].secret", "invalid"),
        ({"name": "a", "description": "d" * 1001}, "parameters[0].description", "invalid"),
        ({"name": "a", "description": 5}, "parameters[0].description", "invalid"),
        ({"name": "a", "choices": ["x"]}, "parameters[0].choices", "not_allowed"),
        ({"name": "a", "type": "choice", "choices": ["x"] * 201}, "parameters[0].choices", "max_items"),
        ({"name": "a", "type": "choice", "choices": [""]}, "parameters[0].choices", "invalid"),
        ({"name": "a", "type": "choice", "choices": ["x", "x"]}, "parameters[0].choices", "duplicate"),
        ({"name": "a", "type": "integer", "max": 1.5}, "parameters[0].max", "invalid"),
        ({"name": "a", "type": "number", "min": "1"}, "parameters[0].min", "invalid"),
        ({"name": "a", "max_length": -1}, "parameters[0].max_length", "invalid"),
        ({"name": "a", "min_length": 3, "max_length": 2}, "parameters[0].min_length", "invalid"),
        ({"name": "a", "type": "integer", "pattern": "x"}, "parameters[0].pattern", "not_allowed"),
        ({"name": "a", "pattern": "x" * 501}, "parameters[0].pattern", "invalid"),
        ({"name": "a", "secret": True, "default": "x"}, "parameters[0].default", "not_allowed"),
        ({"name": "a", "type": "integer", "max": 3, "default": 5}, "parameters[0].default", "max_value"),
    ],
)
def test_each_declaration_rule(declaration, field, code):
    errors = p.validate_spec([declaration])
    assert (field, code) in [(f, c) for f, c, _ in errors]
    assert errors == old_validate_spec([declaration])


def test_a_default_is_not_checked_when_its_declaration_has_another_problem():
    errors = p.validate_spec([{"name": "a", "type": "integer", "max": 3, "default": 5, "bogus": 1}])
    assert [f for f, _c, _m in errors] == ["parameters[0].bogus"]


# --- bash_taint: the arithmetic regions, one function per construct ------------------------------
def old_arithmetic_regions(text: str) -> list[tuple[int, str, str]]:
    """``(offset, region, construct)`` for each place bash evaluates as arithmetic."""
    regions = []
    for match in re.finditer(r"\$?\(\(", text):
        end = bash_taint._matching(text, match.start() + (1 if text[match.start()] == "$" else 0), "(", ")")
        regions.append((match.start(), text[match.start() : end], "arithmetic (( ))"))
    for match in re.finditer(r"\$\[", text):
        end = bash_taint._matching(text, match.start() + 1, "[", "]")
        regions.append((match.start(), text[match.start() : end], "arithmetic $[ ]"))
    for match in re.finditer(r"\[\[", text):
        end = text.find("]]", match.end())
        end = len(text) if end < 0 else end
        region = text[match.start() : end]
        if re.search(r"(?<![\w-])-(eq|ne|lt|le|gt|ge|v)\b", region):
            regions.append((match.start(), region, "an arithmetic comparison in [[ ]]"))
    for match in re.finditer(r"\$\{([#!]?)(" + bash_taint._NAME + r"|[0-9@*])", text):
        end = bash_taint._matching(text, match.start() + 1, "{", "}")
        rest = text[match.end() : end]
        if rest.startswith(("[@]", "[*]")):  # every element: not a subscript expression
            rest = rest[3:]
        if match.group(1) == "!" or rest.startswith("[") or re.match(r":(?![-=?+])", rest):
            regions.append(
                (match.start(), match.group(1) + match.group(2) + rest, "a subscript, offset or ${!…}")
            )
    for match in re.finditer(r"(?<![\w$])" + bash_taint._NAME + r"\[", text):
        end = bash_taint._matching(text, match.end() - 1, "[", "]")
        if text[end : end + 1] == "=" or text[end : end + 2] == "+=":
            regions.append((match.start(), text[match.end() : end - 1], "an array subscript"))
    for match in re.finditer(r"(?:\(|\s)\[([^\]\n]*)\]\+?=", text):
        regions.append((match.start(), match.group(1), "an array subscript"))
    return regions


TAINT_PIECES = [
    "((",
    "))",
    "$((",
    "$[",
    "]",
    "[",
    "[[",
    "]]",
    " -gt ",
    " -v ",
    "-eq",
    "${",
    "${!",
    "${#",
    "}",
    "[@]",
    "[*]",
    ":",
    ":-",
    "a",
    "x",
    "1",
    "@",
    "=",
    "+=",
    " ",
    "\n",
    "(",
    ")",
    "$",
    "a[",
    "let ",
]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(st.sampled_from(TAINT_PIECES), max_size=30).map("".join))
def test_arithmetic_regions_as_before(text):
    assert bash_taint._arithmetic_regions(text) == old_arithmetic_regions(text)


@pytest.mark.parametrize(
    ("text", "construct"),
    [
        ("(( x ))", "arithmetic (( ))"),
        ("$[ x ]", "arithmetic $[ ]"),
        ("[[ $x -gt 1 ]]", "an arithmetic comparison in [[ ]]"),
        ("${a[x]} ${!x} ${x:1}", "a subscript, offset or ${!…}"),
        ("a[x]=1", "an array subscript"),
        ("a=([x]=1)", "an array subscript"),
    ],
)
def test_each_arithmetic_construct(text, construct):
    assert construct in [c for _o, _r, c in bash_taint._arithmetic_regions(text)]
    assert bash_taint._arithmetic_regions("[[ $x == 1 ]] ${a[@]} ${x:-1} a[x]") == []
