"""Validators shared by every app: the characters a name may hold.

A name is one line of text shown in lists, logs, the admin, terminals and notifications.
Control characters (``\\n`` and ``\\r`` forge log lines and break one-line displays; ``\\x1b``
drives terminals) and invisible formatting characters (bidi overrides such as U+202E turn
``exe.txt`` into ``txt.exe`` on screen; zero-width characters make two different names look
the same) have no place in one, so every name field refuses them: tasks, templates (and the
name a template's ``name_pattern`` renders), projects, API keys, and the description that
labels a webhook (which may be several lines: there ``\\n`` and ``\\t`` are allowed).

Refused: Unicode categories Cc (controls), Cf (format: bidi marks, embeddings, overrides and
isolates, U+061C, zero-width space, word joiner, BOM, soft hyphen, tag characters), Cs (lone
surrogates), Zl and Zp (line and paragraph separators). Allowed despite being Cf: U+200C
ZERO WIDTH NON-JOINER and U+200D ZERO WIDTH JOINER, which Persian, the Indic scripts and
emoji sequences need; they cannot reorder text.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

from django.core.exceptions import ValidationError

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})
MULTILINE_ALLOWED = frozenset({"\n", "\t"})


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def first_refused_character(value: str, allowed: frozenset[str] = frozenset()) -> tuple[int, str] | None:
    """``(index, char)`` of the first character a name may not hold, or None."""
    for index, char in enumerate(value):
        if char in allowed or char in ALLOWED_FORMAT:
            continue
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            return index, char
    return None


def _check(value: object, allowed: frozenset[str], what: str) -> None:
    if not isinstance(value, str):
        return
    found = first_refused_character(value, allowed)
    if found is None:
        return
    index, char = found
    raise ValidationError(
        "%(what)s must not contain control or invisible formatting characters: "
        "%(char)s at position %(index)d.",
        code="invalid_character",
        params={"what": what, "char": _describe(char), "index": index},
    )


def validate_name(value: object) -> None:
    """One line of visible text: no control, bidi, zero-width or other format characters."""
    _check(value, frozenset(), "A name")


def validate_label_text(value: object) -> None:
    """Like :func:`validate_name`, but line breaks and tabs are allowed (a short description)."""
    _check(value, MULTILINE_ALLOWED, "This text")


def is_uuid(value: Any) -> bool:
    """Whether ``value`` spells a UUID (an object's id rather than its slug)."""
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True
