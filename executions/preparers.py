"""The hook through which a layer above executions prepares a run of a task whose script takes
parameters (a task made from a template), so executions never imports that layer.

``templates_app`` registers ``prepare_run`` (``templates_app.apps``): it validates the values
against the task's declarations, renders the script, and splits the secrets out. A caller that
has done that already (``templates_app.services.template_trigger``) hands ``execution_enqueue``
the rendered script instead, and the values are not validated a second time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class RunPreparer(Protocol):
    def __call__(
        self,
        *,
        spec: list[Mapping[str, Any]],
        script: str,
        script_type: str,
        stored: Mapping[str, Any],
        given: Mapping[str, Any],
        digest: str | None = None,
    ) -> tuple[str, dict[str, Any], dict[str, Any]]: ...


_preparer: list[RunPreparer] = []


def register_run_preparer(preparer: RunPreparer) -> None:
    """Set the one preparer (``AppConfig.ready`` may run more than once in tests)."""
    _preparer[:] = [preparer]


def prepare_run(**kwargs: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(rendered script, shown values, secret values)`` from the registered preparer."""
    if not _preparer:
        raise RuntimeError("no run preparer registered: is templates_app in INSTALLED_APPS?")
    return _preparer[0](**kwargs)
