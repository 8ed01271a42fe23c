"""What a secret value is replaced by wherever it is shown or kept (an execution's
``parameters``, a task's, the admin). Shared by templates_app (which masks) and executions
(which refuses to re-run a masked value), so neither imports the other."""

from __future__ import annotations

MASK = "***"
