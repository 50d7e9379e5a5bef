"""The one grid check and the one atomic writer: what they accept, what they leave on a failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trm_core import safe_io
from trm_core.safe_io import fallback_grid, grid_problem, is_grid, write_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value, fragment", [
    ("[[1]]", "non-empty list of rows, got str"),
    ([], "got an empty list"),
    (None, "got null"),
    ([[1], 2], "row 1 must be a non-empty list of integers, got int"),
    ([[1, 2], [3]], "row 1 has 1 cells but row 0 has 2"),
    ([[0]] * 31, "grid is 31x1; each side must be 1..30"),
    ([[0] * 31], "grid is 1x31"),
    ([[True]], "True is not an integer 0..9 (bool)"),
    ([[1.0]], "1.0 is not an integer 0..9 (float)"),
    ([[4], [10]], "cell [1][0] = 10 is outside 0..9"),
    ([[-1]], "= -1 is outside"),
])
def test_grid_problem_names_what_is_wrong(value, fragment) -> None:
    why = grid_problem(value)
    assert why is not None and fragment in why, why
    assert not is_grid(value)


def test_grids_kaggle_accepts_pass_and_the_side_limit_is_a_parameter() -> None:
    assert grid_problem([[0, 9], [3, 4]]) is None and is_grid([[0] * 30] * 30)
    assert grid_problem([[0] * 11], max_side=10) == "grid is 1x11; each side must be 1..10"


def test_fallback_grid_is_the_input_cut_to_30_or_a_single_zero() -> None:
    big = [[(r + c) % 10 for c in range(35)] for r in range(33)]
    cut = fallback_grid(big)
    assert len(cut) == 30 and all(len(row) == 30 for row in cut) and cut[2][3] == 5
    assert cut is not big and cut[0] is not big[0]
    for bad in (None, [], [[1], [1, 2]], [[10]], [[True]], "x"):
        assert fallback_grid(bad) == [[0]]


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text() == '{"a":[1,2]}'
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError, match="disk gone"):
        with safe_io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk gone")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_safe_io_imports_only_the_standard_library() -> None:
    code = ("import sys; import trm_core.safe_io; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'numba', 'click') "
            "or (m.startswith('trm_core.') and m != 'trm_core.safe_io')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
