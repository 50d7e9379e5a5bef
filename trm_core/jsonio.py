"""Reading JSON input: the one reader for tasks, solutions, submissions, manifests and the runner.

Input: a file path (or text already read) and a label for messages. Output: the parsed value, or
a `JSONInputError` naming the file and what to fix. The rules, the same everywhere:
  - UTF-8, with or without a byte-order mark (editors on Windows add one);
  - a key repeated in one object is an error naming the key, unless the caller collects
    repeats in a list (task files report them per task instead);
  - nesting deeper than MAX_DEPTH, or an integer longer than MAX_INT_DIGITS digits, is refused up
    front (Python's parser would end in RecursionError or its 4300-digit ValueError).
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


def _check_limits(text: str, where: str) -> None:
    bare = _STRING.sub('""', text)  # brackets and digits inside strings do not count
    for m in _LONG_DIGITS.finditer(bare):
        if m.start() and bare[m.start() - 1] in ".eE":
            continue  # a float's fraction or exponent: parsed as a float, never an int
        raise JSONInputError(f"{where}: an integer of {len(m.group())} digits; "
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
                raise JSONInputError(f"{where}: nested more than {MAX_DEPTH} levels deep; "
                                     "no task, submission or manifest nests like that")


def loads(text: str | bytes, where: str = "JSON input", duplicates: list[str] | None = None) -> object:
    """Parse JSON text by the rules above. With `duplicates` (a list), repeated keys are appended
    to it and the last value wins; without it, a repeated key raises JSONInputError."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise JSONInputError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif text.startswith("\ufeff"):
        text = text[1:]
    _check_limits(text, where)

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                if duplicates is None:
                    raise JSONInputError(f"{where}: key {key!r} appears more than once in one object")
                duplicates.append(key)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs_hook)
    except JSONInputError:
        raise
    except json.JSONDecodeError as e:
        raise JSONInputError(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # a limit lower than MAX_DEPTH set by the host; still a clean message
        raise JSONInputError(f"{where}: nested too deeply to parse") from None
    except ValueError as e:  # int conversion limits set below ours by the host
        raise JSONInputError(f"{where}: {e}") from None


def load(path: str | os.PathLike, duplicates: list[str] | None = None) -> object:
    """Read and parse one JSON file (see `loads`); a missing or unreadable file is a JSONInputError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise JSONInputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise JSONInputError(f"{path}: is a folder, not a JSON file") from None
    except OSError as e:
        raise JSONInputError(f"{path}: cannot read: {e.strerror}") from None
    return loads(data, str(path), duplicates)
