"""The pure parameter functions: validation, CLI strings, placeholder contexts, quoting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from templates_app import parameters as p

# The suite-wide cache fixture touches the database cache.
pytestmark = pytest.mark.django_db

SPEC = [
    {"name": "s", "type": "string", "min_length": 2, "max_length": 5, "pattern": "[a-z]+"},
    {"name": "i", "type": "integer", "min": 1, "max": 10, "required": True},
    {"name": "x", "type": "number", "min": -1.5},
    {"name": "b", "type": "boolean", "default": True},
    {"name": "c", "type": "choice", "choices": ["red", "blue"]},
    {"name": "tok", "type": "string", "secret": True},
]


def codes(errors: list[tuple[str, str, str]]) -> dict[str, str]:
    return {field: code for field, code, _ in errors}


def test_valid_values_and_defaults():
    clean, errors = p.validate(SPEC, {"s": "abc", "i": 3, "x": 0, "c": "red", "tok": "t"})
    assert errors == []
    assert clean == {"s": "abc", "i": 3, "x": 0, "b": True, "c": "red", "tok": "t"}


def test_every_problem_is_reported_at_once():
    _clean, errors = p.validate(SPEC, {"s": "A", "x": -2, "b": "true", "c": "green", "zz": 1, "tok": None})
    assert codes(errors) == {
        "parameters.zz": "unknown",
        "parameters.s": "min_length",
        "parameters.i": "required",
        "parameters.x": "min_value",
        "parameters.b": "invalid_type",
        "parameters.c": "invalid_choice",
    }


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("i", True, "invalid_type"),  # a boolean is not an integer
        ("i", 2.0, "invalid_type"),
        ("i", "2", "invalid_type"),
        ("x", "1.5", "invalid_type"),
        ("x", float("nan"), "invalid_type"),
        ("b", 1, "invalid_type"),
        ("s", "abcdef", "max_length"),
        ("s", "ab1", "pattern_mismatch"),
        ("s", "a\x00", "invalid"),
        ("s", "\ud800x", "invalid"),
        ("c", 1, "invalid_type"),
    ],
)
def test_no_silent_coercion(name, value, code):
    _clean, errors = p.validate(SPEC, {"i": 1, name: value})
    assert codes(errors) == {f"parameters.{name}": code}


def test_messages_never_quote_values():
    _clean, errors = p.validate(SPEC, {"i": 1, "tok": 123456789})
    assert "123456789" not in str(errors)


def test_split_secrets():
    shown, secrets = p.split_secrets(SPEC, {"s": "ab", "tok": "t"})
    assert shown == {"s": "ab", "tok": "***"} and secrets == {"tok": "t"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"b": "true"}, {"b": True}),
        ({"b": "FALSE"}, {"b": False}),
        ({"i": "-42"}, {"i": -42}),
        ({"x": "2.5"}, {"x": 2.5}),
        ({"x": "1e3"}, {"x": 1000.0}),
        ({"x": "7"}, {"x": 7}),
        ({"s": "true"}, {"s": "true"}),
        ({"unknown": "v"}, {"unknown": "v"}),
    ],
)
def test_cli_strings(raw, expected):
    assert p.coerce_strings(SPEC, raw) == (expected, [])


@pytest.mark.parametrize(("raw", "field"), [({"b": "yes"}, "b"), ({"i": "1.0"}, "i"), ({"x": "nan"}, "x")])
def test_cli_strings_refused(raw, field):
    _values, errors = p.coerce_strings(SPEC, raw)
    assert codes(errors) == {f"parameters.{field}": "invalid_type"}


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        ([{"name": "1x"}], "parameters[0].name", "invalid_name"),
        ([{"name": "a"}, {"name": "A"}], "parameters[1].name", "duplicate"),
        ([{"name": "a", "type": "date"}], "parameters[0].type", "invalid_choice"),
        ([{"name": "a", "type": "choice"}], "parameters[0].choices", "required"),
        ([{"name": "a", "min": 1}], "parameters[0].min", "not_allowed"),
        ([{"name": "a", "type": "integer", "min": 5, "max": 1}], "parameters[0].min", "invalid"),
        ([{"name": "a", "pattern": "("}], "parameters[0].pattern", "invalid_pattern"),
        ([{"name": "a", "type": "integer", "max_length": 3}], "parameters[0].max_length", "not_allowed"),
        ([{"name": "a", "bogus": 1}], "parameters[0].bogus", "unknown_key"),
    ],
)
def test_spec_errors(spec, field, code):
    assert codes(p.validate_spec(spec))[field] == code


BASH_SPEC = [{"name": "v", "type": "string"}, {"name": "n", "type": "integer"}]


@pytest.mark.parametrize(
    "script",
    [
        "echo {{ v }}",
        'x={{ v }}; echo "$x"',
        "echo $(printf %s {{ v }})",
        'echo "$(printf %s {{ v }})"',
        "echo 'a' {{ v }} \"b\"",
        "f() { echo {{ v }}; }",
        "cat <<EOF\nhello\nEOF\necho {{ v }}",
        "echo a#b {{ v }}",
        "echo {{ n }} '{{ n }}' \"{{ n }}\" $(( {{ n }} + 1 )) # {{ n }}",
    ],
)
def test_bash_safe_positions(script):
    assert p.check_script(script, "bash", BASH_SPEC) == []


@pytest.mark.parametrize(
    ("script", "context"),
    [
        ('echo "{{ v }}"', "double-quoted"),
        ("echo '{{ v }}'", "single-quoted"),
        ("# {{ v }}", "comment"),
        ("echo hi # {{ v }}", "comment"),
        ("echo `echo {{ v }}`", "cannot follow"),
        ("echo `date`; echo {{ v }}", "cannot follow"),
        ("echo \\{{ v }}", "escaped"),
        ("echo ${{ v }}", "right after $"),
        ("echo ${x:-{{ v }}}", "${…}"),
        ("echo $(( {{ v }} ))", "arithmetic"),
        ("cat <<'EOF'\n{{ v }}\nEOF", "here-document"),
        ("cat <<-EOF\n\t{{ v }}\n\tEOF", "here-document"),
        ("echo $'\\'' {{ v }}", "cannot follow"),
        ('echo "$(case a in a) echo x;; esac)" {{ v }}', "cannot follow"),
        ("echo ${{ n }}", "right after $"),
    ],
)
def test_bash_unsafe_positions(script, context):
    problems = p.check_script(script, "bash", BASH_SPEC)
    assert problems, script
    assert context in problems[0].message


@pytest.mark.parametrize(
    ("script", "ok"),
    [
        ("print({{ v }})", True),
        ("x = {{ v }} + 'a'", True),
        ("# {{ v }}", True),
        ("print('{{ n }}', {{ n }})", True),
        ("print('{{ v }}')", False),
        ('"""\n{{ v }}\n"""', False),
        ("print(f'{{ v }}')", False),
        ("print(f{{ v }})", False),
        ("print(rb{{ v }})", False),
        ("print('unterminated {{ v }})", False),
    ],
)
def test_python_positions(script, ok):
    assert (p.check_script(script, "python", BASH_SPEC) == []) is ok


def test_secrets_render_as_environment_references():
    spec = [
        {"name": "tok", "type": "string", "secret": True},
        {"name": "n", "type": "integer", "secret": True},
    ]
    bash = p.render_script("x={{ tok }} y={{ n }}", "bash", spec, {"tok": "hunter2", "n": 5})
    assert bash == 'x="${PARAM_TOK}" y="${PARAM_N}"'
    python = p.render_script("x = {{ tok }}; y = {{ n }}", "python", spec, {"tok": "hunter2", "n": 5})
    assert "hunter2" not in python and "PARAM_TOK" in python and "json" in python


# --- property: any string round-trips literally -------------------------------------------------
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
STRING_SPEC = [{"name": "v", "type": "string"}]


def run_script(script_type: str, script: str) -> bytes:
    # Python scripts run on the interpreter the sandbox runs them with (not the worker's).
    python = p.script_python()[0] or sys.executable
    command = ["bash", "-c", script] if script_type == "bash" else [python, "-c", script]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(command, capture_output=True, env=env, timeout=10, check=True)
    return result.stdout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=TEXT)
def test_bash_round_trip(value):
    script = p.render_script("printf '%s' {{ v }}", "bash", STRING_SPEC, {"v": value})
    assert run_script("bash", script) == value.encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=TEXT)
def test_python_round_trip(value):
    script = p.render_script("import sys; sys.stdout.write({{ v }})", "python", STRING_SPEC, {"v": value})
    assert run_script("python", script) == value.encode()


@settings(max_examples=200, deadline=None)
@given(value=TEXT, before=st.sampled_from(["echo ", "x=", "echo a", "f ", "[[ -n "]))
def test_bash_rendering_is_one_quoted_word(value, before):
    rendered = p.render_script(before + "{{ v }}", "bash", STRING_SPEC, {"v": value})[len(before) :]
    import shlex

    assert shlex.split(rendered) == [value] or (value == "" and rendered == "''")
