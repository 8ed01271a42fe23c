"""What a secret value is replaced by wherever it is shown or kept (an execution's
``parameters``, a task's, the admin, a run's output). Shared by templates_app (which masks),
executions (which refuses to re-run a masked value, and masks what a run prints), so neither
imports the other.

Masking a run's output (``SecretMasker``): every occurrence of a value the run received becomes
``***``, also one split across two pieces of output: the end of a piece that could be the start
of a value is held back until the next piece (or the end of the stream) shows whether it is.
Values shorter than ``MIN_MASKED_LENGTH`` are not masked (``***`` everywhere a ``1`` or ``on``
appears would make output useless and tell the value anyway), as GitHub Actions does; each line
of a multi-line value is masked on its own as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
MIN_MASKED_LENGTH = 4


def maskable(values: Iterable[str]) -> list[str]:
    """The strings to hide for ``values``: each long enough one, and each long enough line of a
    multi-line one, longest first."""
    found: set[str] = set()
    for value in values:
        for part in (value, *value.splitlines()):
            part = part.strip("\r")
            if len(part) >= MIN_MASKED_LENGTH:
                found.add(part)
    return sorted(found, key=lambda v: (-len(v), v))


class SecretMasker:
    """Masks one output stream fed piece by piece (see the module docstring)."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = maskable(values)
        self.pattern = re.compile("|".join(map(re.escape, self.values))) if self.values else None
        self.longest = len(self.values[0]) if self.values else 0
        self.first_chars = {value[0] for value in self.values}
        self.held = ""

    def mask(self, text: str) -> str:
        """``text`` with every whole value in it replaced (nothing held back)."""
        return self.pattern.sub(MASK, text) if self.pattern is not None else text

    def feed(self, text: str) -> str:
        """What of ``text`` (after what was held back) can be shown now, masked."""
        if self.pattern is None:
            return text
        masked = self.mask(self.held + text)
        cut = self._partial_start(masked)
        self.held = masked[cut:]
        return masked[:cut]

    def flush(self) -> str:
        """The end of the stream: what was held back was not a value after all."""
        rest, self.held = self.held, ""
        return rest

    def _partial_start(self, text: str) -> int:
        """Where the longest end of ``text`` that starts some value (but is not all of it) begins."""
        for start in range(max(0, len(text) - self.longest + 1), len(text)):
            if text[start] in self.first_chars:
                tail = text[start:]
                if any(len(value) > len(tail) and value.startswith(tail) for value in self.values):
                    return start
        return len(text)
