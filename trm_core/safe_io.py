"""Grids as Kaggle accepts them, and files written so a reader never sees half of one.

Standard library only, and importing it imports nothing else from trm_core: the notebook runner's
fallback (submission/fallback.py) and the notebook's last cell (bundle/cell_finalize.py, which
carries this file's text so that it works when the package failed to install) use it before torch
or numpy are known to work.

- `grid_problem(value, max_side)`: what is wrong with a JSON value as a grid (None if nothing): a
  list of 1..max_side rows, each a list of the same 1..max_side ints 0..9; bools and floats are not
  ints. The one grid check of the project: tasks, submissions and the fallback all ask it.
- `fallback_grid(value)`: the guess used where nothing better exists: the value itself when it is
  a grid, cut to its top-left 30x30, else [[0]].
- `write_atomic(path, data)` / `write_json_atomic(path, obj)`: a temporary file in the same
  folder, fsync, os.replace, then fsync of the folder where the filesystem allows it; the
  temporary file is removed if anything fails, and an existing file is left as it was.
  `atomic_path(path)` gives the same guarantee to a writer that wants a path (torch.save).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

MAX_SIDE = 30  # Kaggle's limit on either side of a grid


def grid_problem(value: object, max_side: int = MAX_SIDE) -> str | None:
    """What makes `value` unacceptable as a grid (None if it is fine). Sides are checked before
    the cells, so an oversized value is named without reading all of it."""
    if not isinstance(value, list) or not value:
        return f"grid must be a non-empty list of rows, got {describe(value)}"
    width = None
    for r, row in enumerate(value):
        if not isinstance(row, list) or not row:
            return f"row {r} must be a non-empty list of integers, got {describe(row)}"
        if width is None:
            width = len(row)
        elif len(row) != width:
            return f"row {r} has {len(row)} cells but row 0 has {width}; rows must have equal length"
        if len(value) > max_side or width > max_side:
            return f"grid is {len(value)}x{width}; each side must be 1..{max_side}"
        for c, v in enumerate(row):
            if type(v) is not int:  # bool is a subclass of int: reject it explicitly; floats too
                return f"cell [{r}][{c}] = {v!r} is not an integer 0..9 ({type(v).__name__})"
            if not 0 <= v <= 9:
                return f"cell [{r}][{c}] = {v} is outside 0..9"
    return None


def describe(value: object) -> str:
    """A JSON value's kind, for messages: "a list", "an empty list", "null", "str", ..."""
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if value is None:
        return "null"
    return type(value).__name__


def is_grid(value: object, max_side: int = MAX_SIDE) -> bool:
    return grid_problem(value, max_side) is None


def fallback_grid(value: object) -> list[list[int]]:
    """`value` itself cut to its top-left 30x30 when that is a grid, else [[0]]."""
    if isinstance(value, list):
        cut = [row[:MAX_SIDE] if isinstance(row, list) else row for row in value[:MAX_SIDE]]
        if is_grid(cut):
            return [list(row) for row in cut]
    return [[0]]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; a data file should be readable like any other
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; return the path."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: object, *, indent: int | None = None) -> Path:
    """`obj` as JSON (compact unless `indent`), written atomically; return the path."""
    separators = (",", ":") if indent is None else (",", ": ")
    return write_atomic(path, json.dumps(obj, indent=indent, separators=separators))


def _sync_folder(folder: Path) -> None:
    """Make a rename durable; not every filesystem allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
