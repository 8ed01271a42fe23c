"""The streaming masker (core.secrets.SecretMasker): whole values, values split across pieces
at every position, lines of multi-line values, and the short-value rule."""

from __future__ import annotations

import pytest

from core.secrets import MASK, MIN_MASKED_LENGTH, SecretMasker, maskable

VALUE = "s3cr3t-value"


def fed(masker: SecretMasker, pieces: list[str]) -> str:
    return "".join(masker.feed(piece) for piece in pieces) + masker.flush()


@pytest.mark.parametrize("cut", range(len(VALUE) + 1))
def test_a_value_split_anywhere_is_masked(cut):
    text = f"before {VALUE} after"
    at = len("before ") + cut
    assert fed(SecretMasker([VALUE]), [text[:at], text[at:]]) == f"before {MASK} after"


def test_one_character_at_a_time():
    text = f"x{VALUE}y{VALUE}"
    assert fed(SecretMasker([VALUE]), list(text)) == f"x{MASK}y{MASK}"


def test_only_a_possible_start_of_a_value_is_held_back():
    masker = SecretMasker([VALUE])
    assert masker.feed("progress 50%\n") == "progress 50%\n"  # nothing waits for more output
    assert masker.feed("tok s3c") == "tok "
    assert masker.feed("r3") == ""
    assert masker.feed("!") == "s3cr3!"  # not the value after all
    assert masker.feed("end s3cr") == "end "
    assert masker.flush() == "s3cr"


def test_longest_value_wins_and_lines_of_multiline_values_are_masked():
    masker = SecretMasker(["abcd", "abcdefgh", "line-one\nline-two"])
    assert masker.mask("abcdefgh abcd") == f"{MASK} {MASK}"
    assert masker.mask("line-two then line-one") == f"{MASK} then {MASK}"


def test_short_values_are_not_masked():
    assert MIN_MASKED_LENGTH == 4
    assert maskable(["abc", "", "abcd"]) == ["abcd"]
    masker = SecretMasker(["on", "1"])
    assert fed(masker, ["on 1 done"]) == "on 1 done"
