"""bundle.notebook, the cell templates and bundle.execute: notebook structure, the standard-library
repair cell against malformed submissions, and whole-notebook runs against a Kaggle-like tree
(bundle zipped, a stand-in runner that checks the command-line contract)."""

import importlib
import json
import re
import shutil
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from bundle.execute import execute_notebook, run_cells
from bundle.manifest import MARKER_NAME, write_manifest
from bundle.notebook import NotebookSettings, build_notebook, code_cells, fill_template, write_notebook

CHALLENGES = {
    "aaa": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1, 2], [3, 4]]}]},
    "bbb": {"train": [], "test": [{"input": [[5]]}, {"input": [[7, 7, 7]]}]},
    "ccc": {"train": [], "test": [{"input": [[10, 1]]}]},  # an invalid test input: fallback is [[0]]
}


KERNEL_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"  # the notebook runs on this interpreter


def settings(**kw):
    return NotebookSettings(bundle_id="0123456789abcdef", trm_version="0.1.0", **kw)


def test_notebook_structure():
    nb = build_notebook(settings())
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] == 5
    assert nb["metadata"]["kernelspec"] == {"display_name": "Python 3", "language": "python", "name": "python3"}
    assert nb["metadata"]["language_info"]["name"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code", "code"]
    for cell in nb["cells"][1:]:
        assert cell["outputs"] == [] and cell["execution_count"] is None and cell["metadata"] == {}
    sources = code_cells(nb)
    for i, src in enumerate(sources):
        compile(src, f"<cell {i}>", "exec")
        assert 'if __name__ == "__main__":\n    main()' in src
    assert "BUNDLE_ID = '0123456789abcdef'" in sources[0] and "PACKAGE_VERSION = '0.1.0'" in sources[0]
    assert "--no-index" in sources[0]
    assert "TIME_LIMIT_S = 43200" in sources[1] and '"--deadline"' in sources[1] and '"--bundle-dir"' in sources[1]
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.from_dict(nb))


def test_run_cell_timing_comes_from_the_clock_module():
    """The run cell cannot import the kit: its limit, margin and kill grace are filled from
    submission/clock.py when the notebook is generated, and the template's own defaults (what the
    cell holds before filling) are the same numbers."""
    from bundle import cell_run
    from submission import clock
    from submission.scheduler import Budget

    namespace: dict = {}
    exec(compile(code_cells(build_notebook(settings()))[1], "<run cell>", "exec"), namespace)
    wanted = {"TIME_LIMIT_S": clock.TIME_LIMIT_S, "RUNNER_MARGIN_S": clock.RUNNER_MARGIN_S,
              "KILL_GRACE_S": clock.RUNNER_KILL_GRACE_S}
    assert {k: namespace[k] for k in wanted} == wanted
    assert {k: getattr(cell_run, k) for k in wanted} == wanted
    assert (Budget().time_limit_s, Budget().margin_s) == (clock.TIME_LIMIT_S, clock.RUNNER_MARGIN_S)


def test_repair_cell_imports_only_the_standard_library():
    src = code_cells(build_notebook(settings()))[2]
    imported = set(re.findall(r"^import (\w+)|^from (\w+)", src, re.M))
    modules = {a or b for a, b in imported}
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


def test_repair_cell_carries_safe_io_and_runs_without_the_package(tmp_path):
    """The last cell holds trm_core/safe_io.py's own text (one source for the grid check and the
    atomic writer) and repairs a submission in an interpreter that cannot import trm_core."""
    import subprocess

    from trm_core import safe_io

    src = code_cells(build_notebook(settings()))[2]
    body = Path(safe_io.__file__).read_text().replace("from __future__ import annotations\n", "")
    assert body.strip() in src and "trm_core.safe_io import" not in src
    assert src.count("from __future__ import annotations") == 1
    (tmp_path / "final.py").write_text(src)
    inp, work = tmp_path / "input", tmp_path / "working"
    inp.mkdir()
    work.mkdir()
    (inp / "arc-agi_test_challenges.json").write_text(json.dumps(CHALLENGES))
    (work / "submission.json").write_text(json.dumps({"aaa": [{"attempt_1": [[0]] * 31}]}))
    env = {"TRM_KAGGLE_INPUT": str(inp), "TRM_KAGGLE_WORKING": str(work), "PATH": "/usr/bin:/bin"}
    check = "import sys; sys.modules['trm_core'] = None; exec(open(sys.argv[1]).read(), {'__name__': '__main__'})"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", check, str(tmp_path / "final.py")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    sub = json.loads((work / "submission.json").read_text())
    assert_valid(sub)
    assert sub["aaa"][0]["attempt_1"] == [[1, 2], [3, 4]] and sub["ccc"][0]["attempt_2"] == [[0]]
    assert not [p.name for p in work.iterdir() if p.name != "submission.json"]  # no temporary file left


def test_templates_import_without_side_effects(capsys, monkeypatch):
    monkeypatch.delenv("TRM_START_TIME", raising=False)
    for name in ("bundle.cell_setup", "bundle.cell_run", "bundle.cell_finalize"):
        importlib.reload(importlib.import_module(name))
    assert capsys.readouterr().out == ""
    import os
    assert "TRM_START_TIME" not in os.environ


def test_fill_template_rejects_unknown_settings():
    with pytest.raises(ValueError, match="no setting named NOPE"):
        fill_template("cell_run.py", {"NOPE": 1})
    with pytest.raises(ValueError, match="leaves no time"):
        NotebookSettings(bundle_id="x", trm_version="0", time_limit_s=600, runner_margin_s=600)


# ---- the repair cell, executed as the notebook would ---------------------------------------------


def run_final_cell(tmp_path, monkeypatch, submission, challenges=CHALLENGES, raw=None):
    inp, work = tmp_path / "input", tmp_path / "working"
    (inp / "competitions" / "arc").mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    if challenges is not None:
        (inp / "competitions" / "arc" / "arc-agi_test_challenges.json").write_text(json.dumps(challenges))
    path = work / "submission.json"
    if raw is not None:
        path.write_text(raw)
    elif submission is not None:
        path.write_text(json.dumps(submission))
    monkeypatch.setenv("TRM_KAGGLE_INPUT", str(inp))
    monkeypatch.setenv("TRM_KAGGLE_WORKING", str(work))
    monkeypatch.delenv("TRM_CHALLENGES_FILE", raising=False)
    src = code_cells(build_notebook(settings()))[2]
    exec(compile(src, "<final cell>", "exec"), {"__name__": "__main__"})
    return json.loads(path.read_text()) if path.exists() else None


def assert_valid(sub, challenges=CHALLENGES):
    assert list(sub) == list(challenges)
    for tid, task in challenges.items():
        assert len(sub[tid]) == len(task["test"])
        for pair in sub[tid]:
            assert set(pair) == {"attempt_1", "attempt_2"}
            for grid in pair.values():
                assert 1 <= len(grid) <= 30 and len({len(r) for r in grid}) == 1 and 1 <= len(grid[0]) <= 30
                assert all(type(v) is int and 0 <= v <= 9 for r in grid for v in r)
    try:  # cross-check with the package's own validator when it is there
        from trm_core.submission_file import validate
    except ImportError:
        return
    assert validate(sub, challenges) == []


GOOD = [[3, 3], [3, 3]]
MALFORMED = {
    "missing file": None,
    "not a dict": [1, 2, 3],
    "empty": {},
    "wrong shapes": {
        "aaa": [{"attempt_1": [[1, 2], [3]], "attempt_2": GOOD}],  # ragged
        "bbb": [{"attempt_1": [[10]], "attempt_2": [[True]]}],  # value 10, bool; second test input missing
        "ccc": {"attempt_1": GOOD},  # not a list
        "zzz": [{"attempt_1": GOOD, "attempt_2": GOOD}],  # not in the challenges
    },
    "too big and empty": {
        "aaa": [{"attempt_1": [[0]] * 31, "attempt_2": []}],
        "bbb": [{"attempt_1": [[1.0]], "attempt_2": [[]]}, {"attempt_1": GOOD}, {"attempt_1": GOOD, "attempt_2": GOOD}],
        "ccc": [None],
    },
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_repair_cell_fixes_malformed_submissions(tmp_path, monkeypatch, case, capsys):
    sub = run_final_cell(tmp_path, monkeypatch, MALFORMED[case])
    assert_valid(sub)
    assert "[trm final]" in capsys.readouterr().out
    if case == "wrong shapes":
        assert sub["aaa"][0] == {"attempt_1": [[1, 2], [3, 4]], "attempt_2": GOOD}  # valid attempt kept
        assert sub["bbb"][1] == {"attempt_1": [[7, 7, 7]], "attempt_2": [[7, 7, 7]]}  # fallback = test input
        assert sub["ccc"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]  # invalid test input -> [[0]]
    if case == "too big and empty":
        assert sub["bbb"][1] == {"attempt_1": GOOD, "attempt_2": [[7, 7, 7]]}


def test_repair_cell_survives_unreadable_json_and_missing_challenges(tmp_path, monkeypatch, capsys):
    sub = run_final_cell(tmp_path, monkeypatch, None, raw='{"aaa": [')
    assert_valid(sub)
    assert "unreadable" in capsys.readouterr().out
    sub = run_final_cell(tmp_path / "b", monkeypatch, {"x": [{"attempt_1": [[12]], "attempt_2": GOOD}]}, challenges=None)
    assert sub == {"x": [{"attempt_1": [[0]], "attempt_2": GOOD}]}
    assert "no readable arc-agi_test_challenges.json" in capsys.readouterr().out


def test_repair_cell_never_raises(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("TRM_KAGGLE_WORKING", str(blocker / "sub"))  # cannot be created
    monkeypatch.setenv("TRM_KAGGLE_INPUT", str(tmp_path))
    exec(compile(code_cells(build_notebook(settings()))[2], "<final>", "exec"), {"__name__": "__main__"})
    assert "ERROR: could not check the submission" in capsys.readouterr().out


# ---- whole notebook, as Kaggle would run it --------------------------------------------------------

FAKE_RUNNER = r'''
import argparse, json, os, sys
from bundle.manifest import verify_bundle
p = argparse.ArgumentParser()
for name in ("--deadline", "--start-time", "--input-dir", "--working-dir", "--bundle-dir"):
    p.add_argument(name, required=True)
a = p.parse_args()
record = dict(vars(a), problems=verify_bundle(a.bundle_dir), cwd=os.getcwd())
json.dump(record, open(os.path.join(a.working_dir, "runner-args.json"), "w"))
json.dump({"aaa": [{"attempt_1": [[9]], "attempt_2": [[8]]}]}, open(os.path.join(a.working_dir, "submission.json"), "w"))
# run.json as the runner leaves it: this run's start time, and who answered (here: the model, once)
os.makedirs(os.path.join(a.working_dir, "trm-run"), exist_ok=True)
json.dump({"start_time": float(a.start_time), "device": "cpu", "world": 1,
           "answers": {"test_inputs": 4, "counts": {"adapted": 1, "unadapted": 0, "fallback": 3}}},
          open(os.path.join(a.working_dir, "trm-run", "run.json"), "w"))
print("fake runner done")
'''


def kaggle_tree(tmp_path, zipped: bool, version: str):
    """/kaggle/input-like tree: the bundle as a dataset (wheels/ zipped or not) and the competition."""
    bundle = tmp_path / "input" / "datasets" / "alice" / "trm-kit-bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "checkpoint").mkdir()
    (bundle / "checkpoint" / "model.safetensors").write_bytes(b"\x00" * 64)
    (bundle / "checkpoint" / "manifest.json").write_text('{"slim": true}')
    (bundle / "wheels" / "README").write_text("no wheels needed: everything is installed")
    manifest = write_manifest(bundle, trm_version=version, target="test", python_tag=KERNEL_TAG)
    if zipped:
        shutil.make_archive(str(bundle / "wheels"), "zip", bundle / "wheels")
        shutil.rmtree(bundle / "wheels")
    comp = tmp_path / "input" / "competitions" / "arc-prize-2026-arc-agi-2"
    comp.mkdir(parents=True)
    (comp / "arc-agi_test_challenges.json").write_text(json.dumps(CHALLENGES))
    return manifest, comp


def run_with_stand_in_runner(tmp_path: Path, bundle_id: str, version: str, notebook: Path | None = None,
                             env: dict | None = None):
    """Generate the notebook for `bundle_id` with FAKE_RUNNER as its runner (or take `notebook`, whose
    run cell must name fake_runner) and execute it on the Kaggle-like tree under tmp_path/input, in a
    local run unless `env` says otherwise; returns (the finished process, the working folder)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "fake_runner.py").write_text(FAKE_RUNNER)  # cwd of the runner subprocess
    nb = write_notebook(NotebookSettings(bundle_id=bundle_id, trm_version=version,
                                         runner_module="fake_runner", time_limit_s=7200, runner_margin_s=600),
                        tmp_path / "trm-submit.ipynb")
    if notebook is not None:
        generated = json.loads(nb.read_text())
        given = json.loads(notebook.read_text())
        given["cells"][2] = generated["cells"][2]  # the run cell, with the stand-in runner
        nb.write_text(json.dumps(given))
    work = tmp_path / "working"
    proc = execute_notebook(nb, env={"TRM_KAGGLE_INPUT": str(tmp_path / "input"), "TRM_KAGGLE_WORKING": str(work),
                                     "TRM_SCRATCH": str(scratch), "PYTHONPATH": str(Path(__file__).parents[1]),
                                     "KAGGLE_IS_COMPETITION_RERUN": "", "KAGGLE_KERNEL_RUN_TYPE": "",
                                     **(env or {})},
                            timeout=300)
    return proc, work


@pytest.mark.parametrize("zipped", [True, False])
def test_notebook_runs_end_to_end_with_a_stand_in_runner(tmp_path, zipped):
    try:
        version = metadata.version("trm-kit")  # the install cell then finds it already satisfied
    except metadata.PackageNotFoundError:
        pytest.skip("trm-kit is not installed in this environment (pip install -e .)")
    manifest, comp = kaggle_tree(tmp_path, zipped, version)
    proc, work = run_with_stand_in_runner(tmp_path, manifest["bundle_id"], version)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "trm-kit installed" in out and "fake runner done" in out
    args = json.loads((work / "runner-args.json").read_text())
    assert args["problems"] == [], args
    scratch = tmp_path / "scratch"
    assert float(args["deadline"]) - float(args["start_time"]) == pytest.approx(7200 - 600, abs=0.01)
    # the runner is given the chosen file itself, so it cannot pick another one
    assert Path(args["input_dir"]) == comp / "arc-agi_test_challenges.json" and Path(args["working_dir"]) == work
    expected_bundle = scratch / "bundle" if zipped else tmp_path / "input" / "datasets" / "alice" / "trm-kit-bundle"
    assert Path(args["bundle_dir"]) == expected_bundle
    assert Path(args["cwd"]) == scratch
    sub = json.loads((work / "submission.json").read_text())
    assert_valid(sub)
    assert sub["aaa"] == [{"attempt_1": [[9]], "attempt_2": [[8]]}]  # the runner's answer survives the repair


@pytest.mark.parametrize("kaggle, fails", [({}, True), ({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, True),
                                           ({"KAGGLE_IS_COMPETITION_RERUN": "1"}, False)])
def test_notebook_without_a_bundle_still_writes_a_valid_submission(tmp_path, kaggle, fails):
    """... and says loudly that it is the fallback only: the notebook fails (after the file is
    written) in a local or commit run, never in the competition rerun, whose file must be scored."""
    comp = tmp_path / "input" / "competitions" / "arc"
    comp.mkdir(parents=True)
    (comp / "arc-agi_test_challenges.json").write_text(json.dumps(CHALLENGES))
    nb = write_notebook(settings(), tmp_path / "nb.ipynb")
    env = {"TRM_KAGGLE_INPUT": str(tmp_path / "input"), "TRM_KAGGLE_WORKING": str(tmp_path / "working"),
           "TRM_SCRATCH": str(tmp_path / "scratch"), "KAGGLE_IS_COMPETITION_RERUN": "",
           "KAGGLE_KERNEL_RUN_TYPE": "", **kaggle}
    proc = execute_notebook(nb, env=env, timeout=120)
    assert proc.returncode == (1 if fails else 0), proc.stdout + proc.stderr
    assert "no trm-bundle.json" in proc.stdout and "not starting the runner" in proc.stdout
    assert "THIS RUN IS NOT WORTH SUBMITTING" in proc.stdout and "attach the bundle dataset" in proc.stdout
    assert ("WastedRun" in proc.stderr) == fails
    assert_valid(json.loads((tmp_path / "working" / "submission.json").read_text()))


def test_setup_cell_finds_a_bundle_uploaded_as_one_archive(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    (src / "wheels").mkdir(parents=True)
    (src / "wheels" / "a.txt").write_text("a")
    manifest = write_manifest(src, trm_version="0.0.0", target="t", python_tag="cp00")
    (tmp_path / "input" / "ds").mkdir(parents=True)
    shutil.make_archive(str(tmp_path / "input" / "ds" / "bundle"), "zip", src)
    ns = {"__name__": "not-main"}
    exec(compile(code_cells(build_notebook(settings()))[0], "<setup>", "exec"), ns)
    monkeypatch.setenv("TRM_START_TIME", "0")
    found, m = ns["find_bundle"](str(tmp_path / "input"), str(tmp_path / "scratch"))
    assert m["bundle_id"] == manifest["bundle_id"] and (Path(found) / MARKER_NAME).is_file()
    assert zipfile.is_zipfile(tmp_path / "input" / "ds" / "bundle.zip")


def test_execute_stops_at_a_failing_cell(tmp_path, capsys):
    nb = {"cells": [{"cell_type": "code", "id": "a", "source": "x = 1\n"},
                    {"cell_type": "code", "id": "b", "source": ["raise RuntimeError('boom')\n"]},
                    {"cell_type": "code", "id": "c", "source": "print('not reached')\n"}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert run_cells(path) == 1
    captured = capsys.readouterr()
    assert "not reached" not in captured.out and "boom" in captured.err
