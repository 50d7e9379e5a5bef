"""Reading JSON input: the one reader for tasks, solutions, submissions, manifests and the runner.

Input: a file path (or text already read) and a label for messages. Output: the parsed value, or
a `JSONInputError` naming the file and what to fix. The rules, the same everywhere:
  - UTF-8, with or without a byte-order mark (editors on Windows add one);
  - a key repeated in one object is an error naming the key, unless the caller collects
    repeats in a list (task files report them per task instead);
  - nesting deeper than MAX_DEPTH, or an integer longer than MAX_INT_DIGITS digits, is refused up
    front (Python's parser would end in RecursionError or its 4300-digit ValueError).
`load_members` reads a file of independent members (a challenges file: one task each) so that a
member breaking a limit costs only itself: its long integers become `LongInteger` markers (no grid
check accepts one, and the message names the cell), and a member nested too deeply is left out,
named with the reason. Everything else about the file is refused as `load` refuses it.
Standard library only: the runner reads the challenges with it before numpy or torch load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MAX_DEPTH = 64  # ARC files nest 5 deep, manifests and run records fewer than 10
MAX_INT_DIGITS = 40  # no count, colour, seed or size in these files needs more
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAIR = re.compile(r"\[\]|\{\}")
_LONG_DIGITS = re.compile(r"[0-9]{%d,}" % (MAX_INT_DIGITS + 1))


class JSONInputError(ValueError):
    """A JSON input that cannot be used; the message names the file and the problem."""


class JSONLimitError(JSONInputError):
    """Nesting or an integer beyond the limits: the text may be valid JSON, only too big to trust."""


class LongInteger:
    """Stands in a tolerant read (`load_members`) for an integer of more than MAX_INT_DIGITS digits,
    which is never a colour, a size or a count; its repr says what it was."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _check_limits(text: str, where: str, digits: bool = True) -> None:
    bare = _STRING.sub('""', text)  # brackets and digits inside strings do not count
    for m in _LONG_DIGITS.finditer(bare) if digits else ():
        if m.start() and bare[m.start() - 1] in ".eE":
            continue  # a float's fraction or exponent: parsed as a float, never an int
        raise JSONLimitError(f"{where}: an integer of {len(m.group())} digits; "
                             f"numbers longer than {MAX_INT_DIGITS} digits are refused")
    brackets = rest = _NOT_BRACKET.sub("", bare)
    for _ in range(MAX_DEPTH):  # each pass removes the innermost level, at C speed
        rest, n = _PAIR.subn("", rest)
        if not rest or not n:
            break
    if not rest:
        return
    depth = deepest = 0  # too deep, or unbalanced (the parser names that): measure exactly
    for c in brackets:
        depth += 1 if c in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                raise JSONLimitError(f"{where}: nested more than {MAX_DEPTH} levels deep; "
                                     "no task, submission or manifest nests like that")


def _text(text: str | bytes, where: str) -> str:
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise JSONInputError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _parse(text: str, where: str, duplicates: list[str] | None, long_ints: bool = False) -> object:
    """Parse checked text; long_ints: an over-long integer becomes a LongInteger, not an error."""

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                if duplicates is None:
                    raise JSONInputError(f"{where}: key {key!r} appears more than once in one object")
                duplicates.append(key)
            out[key] = value
        return out

    def parse_int(digits: str) -> object:
        return LongInteger(digits) if len(digits.lstrip("-")) > MAX_INT_DIGITS else int(digits)

    try:
        return json.loads(text, object_pairs_hook=pairs_hook, parse_int=parse_int if long_ints else None)
    except JSONInputError:
        raise
    except json.JSONDecodeError as e:
        raise JSONInputError(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # a limit lower than MAX_DEPTH set by the host; still a clean message
        raise JSONLimitError(f"{where}: nested too deeply to parse") from None
    except ValueError as e:  # int conversion limits set below ours by the host
        raise JSONLimitError(f"{where}: {e}") from None


def loads(text: str | bytes, where: str = "JSON input", duplicates: list[str] | None = None) -> object:
    """Parse JSON text by the rules above. With `duplicates` (a list), repeated keys are appended
    to it and the last value wins; without it, a repeated key raises JSONInputError."""
    text = _text(text, where)
    _check_limits(text, where)
    return _parse(text, where, duplicates)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise JSONInputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise JSONInputError(f"{path}: is a folder, not a JSON file") from None
    except OSError as e:
        raise JSONInputError(f"{path}: cannot read: {e.strerror}") from None


def load(path: str | os.PathLike, duplicates: list[str] | None = None) -> object:
    """Read and parse one JSON file (see `loads`); a missing or unreadable file is a JSONInputError."""
    path = Path(path)
    return loads(_read(path), str(path), duplicates)


def load_members(path: str | os.PathLike, duplicates: list[str] | None = None) -> tuple[object, dict[str, str]]:
    """Read a file whose top level is an object of independent members (a challenges file), so
    that a member breaking a limit costs only itself: (the value, {key: why} for members that could
    not be read). Long integers become LongInteger markers; a member nested too deeply maps to None
    in the value (its key stays, so a submission still answers it) and is named in the dict.
    A file whose top level is not an object, or that fails for any other reason, raises
    JSONInputError exactly as `load` does."""
    path = Path(path)
    where = str(path)
    text = _text(_read(path), where)
    try:
        _check_limits(text, where)
        return _parse(text, where, duplicates), {}
    except JSONLimitError as e:
        refused = e  # what `load` says; raised again when the file is not an object of members
    repeated: list[str] = []  # collected apart: a pass that fails half-way must not add to `duplicates`
    try:  # only long integers: one pass, the markers in place
        _check_limits(text, where, digits=False)
        value = _parse(text, where, repeated, long_ints=True)
    except JSONLimitError:
        value = None
    else:
        if not isinstance(value, dict):
            raise refused
        return _with_repeats(value, repeated, duplicates, where), {}
    members = _members(text)  # too deep somewhere: each member on its own
    if members is None:
        raise refused
    out: dict[str, object] = {}
    bad: dict[str, str] = {}
    for key, member in members:
        if key in out:
            repeated.append(key)
            bad.pop(key, None)  # the last one wins, as in a whole parse
        at = f"{where}: member {key!r}"  # positions in a message are counted within the member
        try:
            _check_limits(member, at, digits=False)
            out[key] = _parse(member, at, repeated, long_ints=True)
        except JSONLimitError as e:
            out[key], bad[key] = None, str(e).removeprefix(f"{at}: ")
    return _with_repeats(out, repeated, duplicates, where), bad


def _with_repeats(value: dict, repeated: list[str], duplicates: list[str] | None, where: str) -> dict:
    if repeated and duplicates is None:
        raise JSONInputError(f"{where}: key {repeated[0]!r} appears more than once in one object")
    if duplicates is not None:
        duplicates.extend(repeated)
    return value


_WS = re.compile(r"[ \t\n\r]*")
_AT_TOP = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')  # what can end a member: "," or the closing "}"
_INSIDE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # inside brackets only the brackets count


def _members(text: str) -> list[tuple[str, str]] | None:
    """(key, value text) of each member of a top-level object, in order, found by counting
    brackets outside strings (each value is parsed on its own after); None when the text is not an
    object of that shape (unbalanced, not an object, text after it)."""
    pos = _WS.match(text).end()
    if not text.startswith("{", pos):
        return None
    pos = _WS.match(text, pos + 1).end()
    members: list[tuple[str, str]] = []
    if text.startswith("}", pos):
        return members if _WS.match(text, pos + 1).end() == len(text) else None
    while True:
        key = _STRING.match(text, pos)
        if key is None:
            return None
        try:
            name = json.loads(key.group())
        except ValueError:
            return None
        pos = _WS.match(text, key.end()).end()
        if not text.startswith(":", pos):
            return None
        start = scan = pos + 1
        depth = 0
        while True:
            m = (_INSIDE if depth else _AT_TOP).search(text, scan)
            if m is None:
                return None
            scan, token = m.end(), m.group()
            if token[0] == '"':
                continue
            if token in "[{":
                depth += 1
            elif depth:
                depth -= 1
            elif token in ",}":
                break
            else:  # a "]" closing nothing
                return None
        members.append((name, text[start:m.start()]))
        if token == "}":
            return members if _WS.match(text, scan).end() == len(text) else None
        pos = _WS.match(text, scan).end()
