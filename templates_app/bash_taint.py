"""Where a bash script could run a string parameter's value as code.

Quoting a value (``shlex.quote``) makes it one shell word, but some places of bash evaluate a
word's *text* again: arithmetic (``(( ))``, ``$(( ))``, ``$[ ]``, ``let``, ``[[ … -gt … ]]``,
variables declared ``-i``, array subscripts, ``${v:offset:length}``) evaluates it as an
expression, and an expression such as ``a[$(id)]`` runs ``id``; ``eval``, ``source``, ``trap``
run it; ``declare``/``local``/``read``/``printf -v``/``unset``/``test -v`` take it as a variable
name, whose subscript is again arithmetic; namerefs and ``${!v}`` follow a name at run time.

``arithmetic_problems`` follows every string, choice and secret value (a placeholder, or its
``PARAM_<NAME>`` environment variable) through assignments (``x=…``, ``declare x=…``,
``for x in …``, ``read x``, ``printf -v x``, function arguments to ``$1``…) and reports each
one that reaches such a place. It is deliberately coarse and errs on the side of refusing:
it does not try to tell strings or comments from code, and a variable assigned from anything
that mentions a tainted one (``n=$(wc -c <<<"$s")``) is tainted too. Integer, number and
boolean parameters are validated as numbers before rendering and stay allowed everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POSITIONAL = "@"  # the pseudo-variable standing for $1 … $9, $@, $*
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# Where a command starts: after a separator, an opening bracket or a keyword.
_COMMAND_START = r"(?:^|(?<=[\n;&|(){!`])|(?<=\bthen\s)|(?<=\bdo\s)|(?<=\belse\s)|(?<=\btime\s))[ \t]*"
_PREFIX = r"(?:(?:builtin|command)[ \t]+)?"
DECLARE_WORDS = ("declare", "typeset", "local", "export", "readonly")
# Commands whose every argument is read as code, a file to run, or a variable name.
CODE_WORDS = ("eval", "source", ".", "trap")
NAME_WORDS = ("unset", "read", "mapfile", "readarray", "getopts")
_COMMAND_RE = re.compile(
    _COMMAND_START
    + _PREFIX
    + r"(let|eval|source|\.|trap|declare|typeset|local|export|readonly|unset|read|mapfile|readarray"
    + r"|getopts|printf|test|\[|set|"
    + _NAME
    + r")(?=[ \t]|$)",
    re.MULTILINE,
)
_ASSIGN_RE = re.compile(r"(?<![\w$/.\-])(" + _NAME + r")(\[[^\]\n]*\])?\+?=")
_FOR_RE = re.compile(r"\b(?:for|select)[ \t]+(" + _NAME + r")[ \t]+in\b")
_FUNCTION_RE = re.compile(
    r"(?:^|(?<=[\n;&|(){]))[ \t]*(?:function[ \t]+(" + _NAME + r")|(" + _NAME + r")[ \t]*\(\s*\))",
    re.MULTILINE,
)
_INT_FLAG_RE = re.compile(r"^[-+][A-Za-z]*i")
_UNSURE_FLAG_RE = re.compile(r"^[-+][A-Za-z]*[aAn]")


@dataclass(frozen=True)
class Reach:
    """A tainted value reaching a dangerous place."""

    sources: frozenset[str]  # parameter names
    offset: int  # where in the analysed text
    construct: str  # what evaluates it, for the message
    through: str  # the variable it went through ("" when the placeholder stands there)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


# --- Extents --------------------------------------------------------------------------------------
def _matching(text: str, start: int, opening: str, closing: str) -> int:
    """Index just past the ``closing`` that balances the ``opening`` at ``start`` (or the end)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith(opening, i):
            depth += 1
            i += len(opening)
            continue
        if text.startswith(closing, i):
            depth -= 1
            i += len(closing)
            if depth == 0:
                return i
            continue
        i += 1
    return len(text)


def _command_end(text: str, start: int) -> int:
    """The end of the simple command at ``start``: an unquoted newline, ``;``, ``&``, ``|`` or
    closing bracket outside any ``$( )``/``${ }``. A quote left open runs to the end of the
    script, so a region never stops short of what bash reads as one command."""
    i, depth, quote = start, 0, ""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            elif quote == '"' and text.startswith("$(", i):
                depth += 1
                i += 1
            elif quote == '"' and c == ")" and depth:
                depth -= 1
        elif c in "'\"":
            quote = c
        elif c in "({":
            depth += 1
        elif c in ")}":
            if depth == 0:
                return i
            depth -= 1
        elif c in "\n;&|" and depth == 0:
            return i
        i += 1
    return len(text)


def _word_end(text: str, start: int) -> int:
    """The end of the shell word starting at ``start``: quotes, ``$( )``, ``${ }`` and
    ``( )`` (array values) nest; unquoted blanks, ``;``, ``&``, ``|`` and newlines end it."""
    i, depth, quote = start, 0, ""
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            elif quote == '"' and text.startswith("$(", i):
                depth += 1
                i += 2
                continue
            elif quote == '"' and c == ")" and depth:
                depth -= 1
            i += 1
            continue
        if c in "'\"":
            quote = c
        elif c in "({":
            depth += 1
        elif c in ")}":
            if depth == 0:
                return i
            depth -= 1
        elif c in " \t\n;&|<>" and depth == 0:
            return i
        i += 1
    return len(text)


# --- References -------------------------------------------------------------------------------
def _refers(region: str, name: str, bare: bool = True) -> bool:
    """Whether ``region`` reads variable ``name`` (as ``$name``, ``${name…}`` or, with
    ``bare``, the bare name as arithmetic reads it)."""
    if name == POSITIONAL:
        return re.search(r"\$\{?[#!]?[0-9@*]", region) is not None
    if bare:
        return re.search(r"(?<![A-Za-z0-9_])" + re.escape(name) + r"(?![A-Za-z0-9_])", region) is not None
    return re.search(r"\$\{?[#!]?" + re.escape(name) + r"(?![A-Za-z0-9_])", region) is not None


def _tainted_in(region: str, taint: Mapping[str, frozenset[str]], bare: bool = True) -> tuple[frozenset, str]:
    """The parameters whose value ``region`` reads, and a variable it reads them through."""
    sources: set[str] = set()
    through = ""
    indirect = "${!" in region
    for name, origin in taint.items():
        if indirect or _refers(region, name, bare):
            sources |= origin
            through = through or name
    return frozenset(sources), through


# --- The analysis ---------------------------------------------------------------------------------
def _commands(text: str) -> list[tuple[str, int, int]]:
    """``(command word, start, end of its logical line)`` for each command the regex finds."""
    return [(m.group(1), m.start(1), _command_end(text, m.end(1))) for m in _COMMAND_RE.finditer(text)]


def _assignments(text: str, commands: list[tuple[str, int, int]], functions: set[str]) -> list:
    """``(target, region, bare)``: the region whose taint flows into the variable ``target``."""
    found = []
    for match in _ASSIGN_RE.finditer(text):
        start = match.end()
        found.append((match.group(1), text[start : _word_end(text, start)], False))
    for match in _FOR_RE.finditer(text):
        found.append((match.group(1), text[match.end() : _command_end(text, match.end())], False))
    for word, start, end in commands:
        region = text[start + len(word) : end]
        if word in ("read", "mapfile", "readarray", "getopts", "printf"):
            line = text[text.rfind("\n", 0, start) + 1 : end]
            for target in re.findall(r"(?<![\w$\-])(" + _NAME + r")", region):
                found.append((target, line, False))
        elif word in functions or word == "set":
            found.append((POSITIONAL, region, False))
    return found


def _propagate(text: str, seeds: Mapping[str, frozenset[str]], commands: list, functions: set[str]) -> dict:
    taint = dict(seeds)
    flows = _assignments(text, commands, functions)
    changed = True
    while changed:
        changed = False
        for target, region, bare in flows:
            sources, _through = _tainted_in(region, taint, bare)
            if sources and not sources <= taint.get(target, frozenset()):
                taint[target] = taint.get(target, frozenset()) | sources
                changed = True
    return taint


def _arithmetic_regions(text: str) -> list[tuple[int, str, str]]:
    """``(offset, region, construct)`` for each place bash evaluates as arithmetic."""
    return [
        *_double_paren_regions(text),
        *_dollar_bracket_regions(text),
        *_test_comparison_regions(text),
        *_expansion_regions(text),
        *_subscript_regions(text),
    ]


def _double_paren_regions(text: str) -> list[tuple[int, str, str]]:
    """``(( ))`` and ``$(( ))``."""
    regions = []
    for match in re.finditer(r"\$?\(\(", text):
        end = _matching(text, match.start() + (1 if text[match.start()] == "$" else 0), "(", ")")
        regions.append((match.start(), text[match.start() : end], "arithmetic (( ))"))
    return regions


def _dollar_bracket_regions(text: str) -> list[tuple[int, str, str]]:
    """The old ``$[ ]`` arithmetic."""
    regions = []
    for match in re.finditer(r"\$\[", text):
        end = _matching(text, match.start() + 1, "[", "]")
        regions.append((match.start(), text[match.start() : end], "arithmetic $[ ]"))
    return regions


def _test_comparison_regions(text: str) -> list[tuple[int, str, str]]:
    """``[[ … ]]`` with an arithmetic operator (``-eq`` … ``-ge``) or ``-v``."""
    regions = []
    for match in re.finditer(r"\[\[", text):
        end = text.find("]]", match.end())
        end = len(text) if end < 0 else end
        region = text[match.start() : end]
        if re.search(r"(?<![\w-])-(eq|ne|lt|le|gt|ge|v)\b", region):
            regions.append((match.start(), region, "an arithmetic comparison in [[ ]]"))
    return regions


def _expansion_regions(text: str) -> list[tuple[int, str, str]]:
    """``${v[…]}``, ``${v:offset:length}`` and ``${!v}``."""
    regions = []
    for match in re.finditer(r"\$\{([#!]?)(" + _NAME + r"|[0-9@*])", text):
        end = _matching(text, match.start() + 1, "{", "}")
        rest = text[match.end() : end]
        if rest.startswith(("[@]", "[*]")):  # every element: not a subscript expression
            rest = rest[3:]
        if match.group(1) == "!" or rest.startswith("[") or re.match(r":(?![-=?+])", rest):
            regions.append(
                (match.start(), match.group(1) + match.group(2) + rest, "a subscript, offset or ${!…}")
            )
    return regions


def _subscript_regions(text: str) -> list[tuple[int, str, str]]:
    """Subscripts of assignments: ``a[…]=`` and ``([…]=…)`` in a compound assignment."""
    regions = []
    for match in re.finditer(r"(?<![\w$])" + _NAME + r"\[", text):
        end = _matching(text, match.end() - 1, "[", "]")
        if text[end : end + 1] == "=" or text[end : end + 2] == "+=":
            regions.append((match.start(), text[match.end() : end - 1], "an array subscript"))
    for match in re.finditer(r"(?:\(|\s)\[([^\]\n]*)\]\+?=", text):
        regions.append((match.start(), match.group(1), "an array subscript"))
    return regions


def _words(args: str) -> list[str]:
    """The shell words of ``args`` (quotes and ``$( )`` kept together)."""
    words, i = [], 0
    while i < len(args):
        if args[i] in " \t\n":
            i += 1
            continue
        end = max(_word_end(args, i), i + 1)
        words.append(args[i:end])
        i = end
    return words


def _command_regions(text: str, commands: list, integers: set[str]) -> list[tuple[int, str, str]]:
    """``(offset, region, construct)`` for each command that evaluates, runs or names."""
    regions = []
    for word, start, end in commands:
        args = text[start + len(word) : end]
        words = _words(args)
        if word == "let":
            regions.append((start, args, "arithmetic (let)"))
        elif word in CODE_WORDS:
            regions.append((start, args, f"{word}, which runs its arguments as code"))
        elif word in NAME_WORDS:
            regions.append((start, args, f"{word}, whose arguments are variable names"))
        elif word in ("test", "[") and "-v" in words:
            regions.append((start, args, f"{word} -v, whose argument is a variable name"))
        elif word == "printf" and "-v" in words[:-1]:
            regions.append(
                (start, words[words.index("-v") + 1], "printf -v, whose argument is a variable name")
            )
        elif word in DECLARE_WORDS:
            regions.extend(_declare_regions(word, start, words))
    for name in integers:
        for match in re.finditer(r"(?<![\w$/.\-])" + re.escape(name) + r"(\[[^\]\n]*\])?\+?=", text):
            region = text[match.end() : _word_end(text, match.end())]
            regions.append((match.start(), region, f"an assignment to {name}, declared -i"))
    return regions


def _declare_regions(word: str, start: int, words: list[str]) -> list[tuple[int, str, str]]:
    """``declare x=value`` keeps ``value`` as data; any other argument is a variable name, and
    with ``-i`` (arithmetic), ``-a``/``-A`` (values re-parsed as compound assignments) or
    ``-n`` (namerefs) the whole command is refused."""
    if any(_INT_FLAG_RE.match(w) or _UNSURE_FLAG_RE.match(w) for w in words):
        return [(start, " ".join(words), f"{word} -i/-a/-A/-n")]
    return [
        (start, w, f"{word}, whose arguments are variable names")
        for w in words
        if not re.match(_NAME + r"\+?=", w) and not w.startswith(("-", "+"))
    ]


def integer_variables(text: str, commands: list) -> set[str]:
    """Names declared ``-i`` (their every assignment is arithmetic)."""
    names: set[str] = set()
    for word, start, end in commands:
        if word not in DECLARE_WORDS:
            continue
        words = text[start + len(word) : end].split()
        if any(_INT_FLAG_RE.match(w) for w in words):
            for w in words:
                match = re.match(_NAME, w)
                if match and not w.startswith(("-", "+")):
                    names.add(match.group(0))
    return names


def analyse(text: str, seeds: Mapping[str, frozenset[str]]) -> list[Reach]:
    """Every place of ``text`` where a tainted value (``seeds``: variable -> parameter names)
    reaches arithmetic, code or a variable name."""
    if not seeds:
        return []
    commands = _commands(text)
    functions = {m.group(1) or m.group(2) for m in _FUNCTION_RE.finditer(text)}
    functions -= {"if", "while", "until", "for", "case", "select", "function"}
    taint = _propagate(text, seeds, commands, functions)
    integers = integer_variables(text, commands)
    reaches = []
    for offset, region, construct in _arithmetic_regions(text) + _command_regions(text, commands, integers):
        sources, through = _tainted_in(region, taint)
        if sources:
            reaches.append(Reach(sources, offset, construct, through))
    return reaches


def problems(
    text: str, seeds: Mapping[str, frozenset[str]], direct: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One problem per parameter (its first reach): ``{name, line, construct, through}``.

    ``direct`` maps the variable standing for each placeholder in ``text`` to its parameter, so
    a placeholder written in place is reported as such rather than "through" a variable.
    """
    seen: dict[str, dict[str, Any]] = {}
    for reach in sorted(analyse(text, seeds), key=lambda r: r.offset):
        for name in sorted(reach.sources):
            if name in seen:
                continue
            through = "" if reach.through in direct else reach.through
            seen[name] = {
                "name": name,
                "line": _line(text, reach.offset),
                "construct": reach.construct,
                "through": through,
            }
    return list(seen.values())
