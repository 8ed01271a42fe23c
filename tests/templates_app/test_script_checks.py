"""Issue 18 items 9 and 19: string values never reach a place where bash evaluates text
(arithmetic, code, variable names), and Python placeholders are checked with the interpreter
that runs the script."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executions.models import ExecutionStatus
from templates_app import parameters as p
from templates_app import services
from tests.tasks.conftest import problem_of

pytestmark = pytest.mark.django_db

SPEC_TEXT = [{"name": "v", "type": "string"}]
SPEC_INT = [{"name": "v", "type": "integer"}]
EXPLOIT = "x[$(touch {marker})]"

# Each runs the exploit value as code when {{ v }} is a string (checked below by running it).
EVALUATING = [
    "replicas={{ v }}\n(( replicas > 10 ))",
    "(( {{ v }} > 10 ))",
    "x={{ v }}\necho $(( x + 1 ))",
    "x={{ v }}\necho $(( $x + 1 ))",
    "echo $(( {{ v }} + 1 ))",
    "x={{ v }}\n[[ $x -gt 1 ]]",
    "x={{ v }}\n[[ x -ge 1 ]]",
    "[[ {{ v }} -eq 1 ]]",
    "x={{ v }}\nlet 'y = x + 1'",
    "let y={{ v }}",
    "x={{ v }}\ndeclare -i y=$x",
    "declare -i y={{ v }}",
    "declare -i y\ny={{ v }}",
    "f() { local -i z=$1; }\nf {{ v }}",
    "typeset -i y={{ v }}",
    "x={{ v }}\na=(1 2)\necho ${a[$x]}",
    "x={{ v }}\na=(1 2)\necho ${a[x]}",
    "x={{ v }}\na[$x]=1",
    "x={{ v }}\na=([$x]=1)",
    "x={{ v }}\ns=abc\necho ${s:x}",
    "x={{ v }}\necho $[ x ]",
    "x={{ v }}\nfor ((i = 0; i < x; i++)); do :; done",
    "f() { (( $1 > 2 )); }\nf {{ v }}",
    'y={{ v }}\nz="$y"\n(( z ))',
    "(( PARAM_V > 1 ))",
    "printf -v {{ v }} '%s' 1",
    "read {{ v }} <<< 1",
]
EXPLOIT_NAME = "a[$(touch {marker})]"
# These take the value as a variable name or as code.
NAMING = [
    "declare {{ v }}=1",
    "f() { local {{ v }}=1; }\nf",
    'x={{ v }}\ntest -v "$x"',
    "a=(1)\nunset {{ v }}",
    "eval {{ v }}",
    'x={{ v }}\neval "echo $x"',
    "trap {{ v }} EXIT",
    "x={{ v }}\necho ${!x}",
    "declare -n r={{ v }}\necho $r",
]
# The usual idioms stay allowed with a string.
ALLOWED = [
    'service={{ v }}\necho "deploying $service"',
    "x={{ v }}\n[[ $x == api ]] && echo yes",
    "x={{ v }}\n[[ -n $x ]]",
    'x={{ v }}\nprintf "%s\\n" "$x"',
    "printf '%s\\n' {{ v }}",
    'export X={{ v }}\necho "$X"',
    'f() { local y={{ v }}; echo "$y"; }\nf',
    "x={{ v }}\ncase $x in api) echo api;; esac",
    'x={{ v }}\nn=3\n(( n > 1 )) && echo "$x"',
    'x={{ v }}\necho "${x:-none}" "${#x}"',
    'arr=({{ v }} b)\nfor item in "${arr[@]}"; do echo "$item"; done',
]


@pytest.fixture
def marker() -> Path:
    path = Path(f"/tmp/pwned-{uuid.uuid4().hex}")  # noqa: S108 - the point is to prove it never appears
    yield path
    path.unlink(missing_ok=True)


def run_bash(script: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, timeout=10, check=False)


def render(script: str, value: str) -> str:
    return p.render_script(script, "bash", SPEC_TEXT, {"v": value})


@pytest.mark.parametrize("script", EVALUATING + NAMING)
def test_a_string_reaching_evaluation_is_refused_naming_the_placeholder(script):
    problems = p.check_script(script, "bash", SPEC_TEXT)
    assert problems, script
    assert problems[0].name == "v"
    assert "{{ v }}" in problems[0].message


@pytest.mark.parametrize("script", EVALUATING)
def test_each_refused_arithmetic_construct_really_runs_the_exploit(script, marker, tmp_path):
    # Not a test that cannot fail: without the checker, bash runs the value.
    run_bash(
        f"PARAM_V={render('{{ v }}', EXPLOIT.format(marker=marker))}\n"
        + render(script, EXPLOIT.format(marker=marker)),
        tmp_path,
    )
    assert marker.exists(), script


@pytest.mark.parametrize("script", EVALUATING)
def test_with_an_integer_parameter_it_is_allowed_and_runs(script, tmp_path):
    if "printf -v" in script or "read " in script:
        pytest.skip("an integer is not a variable name")
    assert p.check_script(script, "bash", SPEC_INT) == []
    rendered = p.render_script(script, "bash", SPEC_INT, {"v": 12})
    result = subprocess.run(
        ["bash", "-c", "PARAM_V=12\n" + rendered], capture_output=True, timeout=10, check=False, cwd=tmp_path
    )
    assert b"syntax error" not in result.stderr, (script, result.stderr)


@pytest.mark.parametrize("script", ALLOWED)
def test_usual_idioms_stay_allowed_and_keep_the_value_data(script, marker, tmp_path):
    assert p.check_script(script, "bash", SPEC_TEXT) == []
    for pattern in (EXPLOIT, EXPLOIT_NAME, "$(touch {marker})", "([0]=$(touch {marker}))"):
        run_bash(render(script, pattern.format(marker=marker)), tmp_path)
        assert not marker.exists(), (script, pattern)


FRAGMENTS = [
    "x={{ v }}",
    "y=$x",
    'y="pre $x"',
    "n=3",
    "(( n > 1 ))",
    "(( y > 1 ))",
    "echo $(( n + 1 ))",
    "echo $(( x ))",
    "[[ $y -lt 4 ]]",
    "[[ $y == a ]]",
    'echo "$x" "$y"',
    "a=(1 2)",
    "echo ${a[n]}",
    "echo ${a[$y]}",
    "a[$x]=1",
    "let n=n+1",
    "let y",
    "declare -i k=$y",
    'f() { echo "$1"; }',
    "f() { (( $1 )); }",
    "f {{ v }}",
    "f $y",
    "printf -v z %s {{ v }}",
    "(( z ))",
    'read -r w <<< "$x"',
    "(( w ))",
    "for i in $x; do echo $i; done",
    "for i in $x; do (( i )); done",
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=5))
def test_whatever_the_checker_accepts_never_runs_the_value(parts, tmp_path):
    script = "\n".join(parts)
    if p.check_script(script, "bash", SPEC_TEXT):
        return
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    for pattern in (EXPLOIT, EXPLOIT_NAME):
        value = pattern.format(marker=marker)
        run_bash(f"export PARAM_V={render('{{ v }}', value)}\n" + render(script, value), tmp_path)
        assert not marker.exists(), script


# --- Through the API and a real worker ---------------------------------------------------------
def template_body(script: str, type_: str) -> dict:
    return {
        "slug": f"t-{uuid.uuid4().hex[:6]}",
        "name": "Scale",
        "name_pattern": "Scale",
        "script_type": "bash",
        "script": script,
        "parameters": [{"name": "replicas", "type": type_, "required": True}],
    }


def test_the_reported_exploit_cannot_be_saved(api):
    script = "replicas={{ replicas }}\nif (( replicas > 10 )); then echo many; else echo few; fi"
    body = problem_of(api.post("/api/v1/templates", template_body(script, "string"), format="json"), 400)
    assert any(e["field"] == "script_content" and "{{ replicas }}" in e["message"] for e in body["errors"])
    assert "line 2" in str(body["errors"])


def test_with_an_integer_parameter_it_saves_and_runs(api, user, inline_worker):
    script = "replicas={{ replicas }}\nif (( replicas > 10 )); then echo many; else echo few; fi"
    response = api.post("/api/v1/templates", template_body(script, "integer"), format="json")
    assert response.status_code == 201, response.content
    trigger = api.post(
        f"/api/v1/templates/{response.json()['id']}/trigger", {"parameters": {"replicas": 12}}, format="json"
    )
    assert trigger.status_code == 202, trigger.content  # queued: 202 (200 only when ?wait saw it finish)
    assert inline_worker.run_pending() == 1
    execution = trigger.json()["execution"]
    detail = api.get(f"/api/v1/tasks/{trigger.json()['task']['id']}/executions/{execution['id']}").json()
    assert detail["status"] == ExecutionStatus.SUCCEEDED and detail["stdout"] == "many\n"
    refused = api.post(
        f"/api/v1/templates/{response.json()['id']}/trigger",
        {"parameters": {"replicas": "x[$(id)]"}},
        format="json",
    )
    assert problem_of(refused, 400)["errors"][0]["field"] == "parameters.replicas"


def test_a_task_saved_before_the_rule_is_refused_at_execute(api, user, project):
    # A templated task whose script predates the rule (written straight to the row).
    template = services.template_create(
        project=project,
        actor=user,
        slug="old",
        name="old",
        name_pattern="old",
        script_type="bash",
        script="r={{ r }}\necho $r",
        parameters=[{"name": "r", "type": "string"}],
    )
    task, _execution = services.template_trigger(
        template=template, actor=user, parameters={"r": "1"}, execute=False
    )
    type(task).objects.filter(pk=task.pk).update(script_content="r={{ r }}\n(( r > 1 ))")
    response = api.post(f"/api/v1/tasks/{task.pk}/execute", {"parameters": {"r": "x[$(id)]"}}, format="json")
    assert response.status_code in (400, 409), response.content
    assert task.executions.count() == 0


# --- Python: the interpreter that runs the script tokenizes it -------------------------------------
FSTRING = "print(f'{ {{ v }} }')"


def test_python_placeholders_are_checked_by_the_script_interpreter(settings):
    settings.TASKFORGE_SCRIPT_PYTHON = "/usr/bin/python3.11"
    if not Path(settings.TASKFORGE_SCRIPT_PYTHON).exists():
        pytest.skip("needs a python3.11")
    problems = p.check_script(FSTRING, "python", SPEC_TEXT)
    # Python 3.11 reads the whole f-string as one string token: the value would be pasted into it.
    assert problems and "Python 3.11" in problems[0].message
    assert p.check_script("print({{ v }})", "python", SPEC_TEXT) == []


def test_a_newer_interpreter_accepts_a_placeholder_inside_an_f_string_expression(settings):
    settings.TASKFORGE_SCRIPT_PYTHON = sys.executable
    assert p.check_script(FSTRING, "python", SPEC_TEXT) == []


def test_a_missing_interpreter_refuses_python_placeholders(settings):
    settings.TASKFORGE_SCRIPT_PYTHON = "no-such-python-" + uuid.uuid4().hex[:6]
    problems = p.check_script("print({{ v }})", "python", SPEC_TEXT)
    assert problems and "TASKFORGE_SCRIPT_PYTHON" in problems[0].message


def test_the_sandbox_runs_the_interpreter_the_checker_used(settings):
    from executions.engine.sandbox import SandboxConfig

    settings.TASKFORGE_SCRIPT_PYTHON = "/usr/bin/python3"
    assert SandboxConfig.from_settings().python == "/usr/bin/python3"
    assert p.script_python() == ("/usr/bin/python3", "/usr/bin/python3")


def test_the_f_string_that_the_checker_accepts_on_3_11_runs_as_data(user, project, inline_worker, marker):
    # Run end to end on the sandbox's python: a value with quotes reaching an f-string is refused
    # (3.11), and the assign-first idiom prints the value literally.
    hostile = f"a' + __import__('os').system('touch {marker}') + '"
    with pytest.raises(ValidationError) as refused:
        services.template_create(
            project=project,
            actor=user,
            slug="fs",
            name="fs",
            name_pattern="fs",
            script_type="python",
            script=FSTRING,
            parameters=SPEC_TEXT,
        )
    if "3.11" not in str(refused.value) and "string literal" not in str(refused.value):
        pytest.skip("the sandbox's python tokenizes f-strings as 3.12+ does")
    template = services.template_create(
        project=project,
        actor=user,
        slug="fs2",
        name="fs",
        name_pattern="fs",
        script_type="python",
        script="v = {{ v }}\nprint(f'{v}', end='')",
        parameters=SPEC_TEXT,
    )
    _task, execution = services.template_trigger(template=template, actor=user, parameters={"v": hostile})
    assert inline_worker.run_pending() == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert not marker.exists()
