"""Which challenges file is answered: the notebook's run and final cells and the runner choose the
one in the folder of the competition the bundle was built for, in both Kaggle layouts, with last
year's competition (or any dataset holding a file of the same name) attached beside it; they refuse
to guess among several when that folder is absent, and the final cell never trades a submission
for the real tasks for one answering a decoy."""

import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from bundle.notebook import NotebookSettings, build_notebook, code_cells, fill_template
from submission import env
from submission.run import Runner, RunnerOptions
from test_bundle_notebook import CHALLENGES, assert_valid, kaggle_tree, run_with_stand_in_runner

SLUG = "arc-prize-2026-arc-agi-2"
NAME = "arc-agi_test_challenges.json"
# last year's competition: other task ids, and a folder that sorts before this year's
DECOY = {f"decoy{i:03d}": {"train": [], "test": [{"input": [[i % 10]]}]} for i in range(12)}
# the runner's answer for the real tasks, as the final cell finds it
ANSWER = {"aaa": [{"attempt_1": [[9]], "attempt_2": [[8]]}],
          "bbb": [{"attempt_1": [[1]], "attempt_2": [[2]]}, {"attempt_1": [[3]], "attempt_2": [[4]]}],
          "ccc": [{"attempt_1": [[5]], "attempt_2": [[6]]}]}
# (real folder, decoy folder) under the input root, per Kaggle layout
LAYOUTS = {
    "2026": (f"competitions/{SLUG}", "competitions/arc-prize-2024"),
    "2025": (SLUG, "arc-prize-2024"),
    "mixed": (f"competitions/{SLUG}", "arc-prize-2024"),  # the decoy is shallower
    "dataset": (f"competitions/{SLUG}", "datasets/alice/arc-data"),
}


def tree(root: Path, layout: str, real: dict | None = CHALLENGES, decoy: dict | None = DECOY) -> Path:
    """The input root with the real competition and a decoy per LAYOUTS; returns the real file."""
    real_dir, decoy_dir = LAYOUTS[layout]
    for folder, body in ((real_dir, real), (decoy_dir, decoy)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        if body is not None:
            (root / folder / NAME).write_text(json.dumps(body))
    return root / real_dir / NAME


def cell(index: int, competition: str = SLUG, **settings) -> str:
    return code_cells(build_notebook(NotebookSettings(bundle_id="0123456789abcdef", trm_version="0.1.0",
                                                      competition=competition, **settings)))[index]


def run_final(tmp_path: Path, monkeypatch, inp: Path, submission, competition: str = SLUG):
    work = tmp_path / "working"
    work.mkdir(exist_ok=True)
    path = work / "submission.json"
    if submission is not None:
        path.write_text(json.dumps(submission))
    monkeypatch.setenv("TRM_KAGGLE_INPUT", str(inp))
    monkeypatch.setenv("TRM_KAGGLE_WORKING", str(work))
    monkeypatch.delenv("TRM_CHALLENGES_FILE", raising=False)
    monkeypatch.delenv("TRM_BUNDLE_DIR", raising=False)
    exec(compile(cell(2, competition), "<final cell>", "exec"), {"__name__": "__main__"})
    return json.loads(path.read_text()) if path.exists() else None


# ---- the runner's own choice -------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_runner_chooses_the_competitions_folder_over_a_decoy(tmp_path: Path, layout: str) -> None:
    real = tree(tmp_path, layout)
    choice = env.choose_challenges(tmp_path, SLUG)
    assert choice.path == real and choice.how == "competition"
    # without the slug the two files are a guess: refused, both named
    blind = env.choose_challenges(tmp_path)
    decoy = tmp_path / LAYOUTS[layout][1] / NAME
    assert blind.path is None and blind.how == "ambiguous" and set(blind.candidates) == {real, decoy}
    assert "refusing to guess" in blind.describe()


def test_the_competitions_folder_without_the_file_never_falls_back_to_a_decoy(tmp_path: Path) -> None:
    tree(tmp_path, "2026", real=None)
    choice = env.choose_challenges(tmp_path, SLUG)
    assert choice.path is None and choice.how == "none"
    # no folder of that slug at all: the one file found is answered, as before
    assert env.choose_challenges(tmp_path, "arc-prize-2099").path == tmp_path / LAYOUTS["2026"][1] / NAME


def test_the_bundle_marker_gives_the_runner_its_slug(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for marker, slug in (({"competition": SLUG}, SLUG), ({"competition": "../etc"}, None), ([1], None),
                         ({"competition": 7}, None), ({}, None)):
        (tmp_path / "b" / "trm-bundle.json").write_text(json.dumps(marker))
        assert env.bundle_competition(tmp_path / "b") == slug
    (tmp_path / "b" / "trm-bundle.json").write_text('{"competition": ' + "[" * 100000 + "]" * 100000 + "}")
    assert env.bundle_competition(tmp_path / "b") is None
    assert env.bundle_competition(None) is None and env.bundle_competition(tmp_path / "missing") is None


def _runner_fallback(tmp_path: Path, inp: Path, bundle: Path | None) -> tuple[dict | None, dict]:
    runner = Runner(RunnerOptions(input_dir=inp, working_dir=tmp_path / "working", bundle_dir=bundle,
                                  scratch_dir=tmp_path / "scratch"), environ={}, echo=lambda line: None)
    runner.write_fallback()
    path = tmp_path / "working" / "submission.json"
    return (json.loads(path.read_text()) if path.is_file() else None), runner


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_the_runner_answers_the_bundles_competition_not_a_decoy(tmp_path: Path, layout: str) -> None:
    inp = tmp_path / "input"
    real = tree(inp, layout)
    bundle = inp / "datasets" / "alice" / "trm-kit-bundle"
    bundle.mkdir(parents=True)
    (bundle / "trm-bundle.json").write_text(json.dumps({"bundle_id": "x", "files": [], "competition": SLUG}))
    sub, runner = _runner_fallback(tmp_path, inp, bundle)
    assert sub is not None and sorted(sub) == sorted(CHALLENGES)
    assert runner.record["inputs"]["challenges"] == str(real) and runner.record["inputs"]["chosen_by"] == "competition"


def test_the_runner_refuses_to_guess_without_the_competitions_folder(tmp_path: Path) -> None:
    inp = tmp_path / "input"
    tree(inp, "2026")
    sub, runner = _runner_fallback(tmp_path, inp, None)  # no bundle, so no slug
    assert sub is None and runner.challenges_path is None
    problem = next(p for p in runner.problems if "refusing to guess" in p)
    assert f"competitions/{SLUG}/{NAME}" in problem and f"competitions/arc-prize-2024/{NAME}" in problem


# ---- the run cell ----------------------------------------------------------------------------------

STAND_IN = "import json, sys\njson.dump(sys.argv[1:], open('runner-argv.json', 'w'))\nprint('stand-in ran')\n"


def run_cell(tmp_path: Path, monkeypatch, inp: Path, competition: str = SLUG,
             override: Path | None = None) -> list[str] | None:
    """The run cell with a stand-in runner that records its arguments; None if it was not started."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    (scratch / "stand_in_runner.py").write_text(STAND_IN)  # the runner's cwd is the scratch folder
    for key, value in {"TRM_KAGGLE_INPUT": inp, "TRM_KAGGLE_WORKING": tmp_path / "working", "TRM_SCRATCH": scratch,
                       "TRM_SETUP_OK": "1", "TRM_BUNDLE_DIR": "", "TRM_START_TIME": repr(time.time())}.items():
        monkeypatch.setenv(key, str(value))
    if override is None:
        monkeypatch.delenv("TRM_CHALLENGES_FILE", raising=False)
    else:
        monkeypatch.setenv("TRM_CHALLENGES_FILE", str(override))
    src = cell(1, competition, runner_module="stand_in_runner", time_limit_s=7200, runner_margin_s=600)
    exec(compile(src, "<run cell>", "exec"), {"__name__": "__main__"})
    argv = scratch / "runner-argv.json"
    return json.loads(argv.read_text()) if argv.is_file() else None


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_run_cell_passes_the_competitions_file_not_a_decoy(tmp_path, monkeypatch, capsys, layout) -> None:
    real = tree(tmp_path / "input", layout)
    argv = run_cell(tmp_path, monkeypatch, tmp_path / "input")
    assert argv is not None, capsys.readouterr().out
    assert argv[argv.index("--input-dir") + 1] == str(real)


def test_the_run_cell_refuses_to_guess_and_does_not_start_the_runner(tmp_path, monkeypatch, capsys) -> None:
    tree(tmp_path / "input", "2026")
    argv = run_cell(tmp_path, monkeypatch, tmp_path / "input", competition="")
    out = capsys.readouterr().out
    assert argv is None and "refusing to guess" in out and "not starting the runner" in out
    assert f"competitions/arc-prize-2024/{NAME}" in out and f"competitions/{SLUG}/{NAME}" in out


@pytest.mark.parametrize("limit", ["abc", "", "nan", "inf", "-5", "600", "1e300x"])
def test_a_time_limit_that_leaves_the_runner_no_time_does_not_start_it(tmp_path, monkeypatch, capsys,
                                                                        limit: str) -> None:
    """A rehearsal's TRM_TIME_LIMIT_S that is not seconds, or not above the runner's margin (600 s
    here): said once, by name, instead of a ValueError or a runner stopped the second it starts."""
    tree(tmp_path / "input", "2026")
    monkeypatch.setenv("TRM_TIME_LIMIT_S", limit)
    argv = run_cell(tmp_path, monkeypatch, tmp_path / "input")
    out = capsys.readouterr().out
    assert argv is None and f"TRM_TIME_LIMIT_S={limit!r}" in out and "not starting it" in out


def test_a_rehearsal_time_limit_above_the_margin_starts_the_runner(tmp_path, monkeypatch) -> None:
    tree(tmp_path / "input", "2026")
    monkeypatch.setenv("TRM_TIME_LIMIT_S", "900")
    argv = run_cell(tmp_path, monkeypatch, tmp_path / "input")
    assert argv is not None and float(argv[argv.index("--deadline") + 1]) > time.time()


def test_the_run_cell_honours_trm_challenges_file(tmp_path, monkeypatch) -> None:
    tree(tmp_path / "input", "2026")
    chosen = tmp_path / "input" / LAYOUTS["2026"][1] / NAME
    argv = run_cell(tmp_path, monkeypatch, tmp_path / "input", override=chosen)
    assert argv is not None and argv[argv.index("--input-dir") + 1] == str(chosen)


def test_both_cells_choose_with_the_same_code() -> None:
    """The run and final cells are standard library only and cannot share a module: their copies of
    the choice must stay the same text, or the runner and the final cell could answer different files."""
    import inspect

    import bundle.cell_finalize as final
    import bundle.cell_run as run

    for name in ("challenge_files", "choose_challenges", "describe_choice"):
        assert inspect.getsource(getattr(run, name)) == inspect.getsource(getattr(final, name)), name
    assert run.SEARCH_DEPTH == final.SEARCH_DEPTH and run.CHALLENGES_NAME == final.CHALLENGES_NAME


# ---- the final cell ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_final_cell_keeps_a_submission_for_the_real_tasks(tmp_path, monkeypatch, capsys, layout) -> None:
    tree(tmp_path / "input", layout)
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", ANSWER)
    assert sub == ANSWER
    assert "dropped" not in capsys.readouterr().out


def test_the_final_cell_rebuilds_from_the_competitions_file_only(tmp_path, monkeypatch) -> None:
    tree(tmp_path / "input", "2025")
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", None)  # the runner wrote nothing
    assert_valid(sub)


def test_without_the_competitions_folder_the_final_cell_keeps_the_submissions_ids(tmp_path, monkeypatch,
                                                                                  capsys) -> None:
    tree(tmp_path / "input", "2026")
    broken = {**ANSWER, "ccc": [{"attempt_1": [[10]], "attempt_2": [[6]]}]}
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", broken, competition="")
    out = capsys.readouterr().out
    assert "refusing to guess" in out and f"competitions/arc-prize-2024/{NAME}" in out
    assert sorted(sub) == sorted(ANSWER) and sub["ccc"] == [{"attempt_1": [[0]], "attempt_2": [[6]]}]
    assert sub["aaa"] == ANSWER["aaa"]


def test_with_no_submission_and_no_choice_the_final_cell_answers_every_candidates_tasks(tmp_path, monkeypatch,
                                                                                        capsys) -> None:
    """Nothing to keep and nothing chosen: a file covering every candidate's tasks holds the real
    ones, where no file at all is a run Kaggle cannot score."""
    tree(tmp_path / "input", "2026")
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", None, competition="")
    assert sub is not None and set(sub) == set(CHALLENGES) | set(DECOY)
    assert_valid({t: sub[t] for t in CHALLENGES})
    assert "none could be chosen" in capsys.readouterr().out


def test_a_lone_decoy_found_by_search_does_not_replace_the_submissions_ids(tmp_path, monkeypatch, capsys) -> None:
    """The competition is not attached under its slug and the only file found holds none of the
    submission's tasks: it is more likely another competition's than the one answered."""
    (tmp_path / "input" / "arc-prize-2024").mkdir(parents=True)
    (tmp_path / "input" / "arc-prize-2024" / NAME).write_text(json.dumps(DECOY))
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", ANSWER)
    assert sub == ANSWER
    assert "keeping the submission's task ids" in capsys.readouterr().out


def test_the_competitions_file_wins_over_a_submission_for_other_tasks(tmp_path, monkeypatch, capsys) -> None:
    tree(tmp_path / "input", "2026")
    decoy_answer = {t: [{"attempt_1": [[1]], "attempt_2": [[1]]}] for t in DECOY}
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", decoy_answer)
    assert_valid(sub)
    out = capsys.readouterr().out
    assert "12 of the submission's 12 task ids are not in" in out and "answered other tasks" in out


def test_the_final_cell_keeps_the_runners_entry_for_a_task_without_a_test_list(tmp_path, monkeypatch) -> None:
    challenges = {**CHALLENGES, "nolist": {"train": []}, "empty": {"train": [], "test": []},
                  "notalist": {"test": {"input": [[1]]}}}
    (tmp_path / "input" / "competitions" / SLUG).mkdir(parents=True)
    (tmp_path / "input" / "competitions" / SLUG / NAME).write_text(json.dumps(challenges))
    zero = [{"attempt_1": [[0]], "attempt_2": [[0]]}]  # what the runner's fallback writes for such a task
    kept = [{"attempt_1": [[4]], "attempt_2": [[12]]}]
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", {**ANSWER, "nolist": zero, "empty": kept})
    assert sub["nolist"] == zero and sub["notalist"] == zero  # missing: one [[0]] pair, never []
    assert sub["empty"] == [{"attempt_1": [[4]], "attempt_2": [[0]]}]
    assert sub["aaa"] == ANSWER["aaa"]


def test_one_oversized_integer_costs_only_its_task(tmp_path, monkeypatch, capsys) -> None:
    """Python refuses to read an integer of over 4300 digits: json.load failed for the whole file,
    and the final cell wrote no submission at all."""
    text = json.dumps({**CHALLENGES, "huge": {"train": [], "test": [{"input": [[123456789]]}]}})
    text = text.replace("123456789", "7" * 5000)
    (tmp_path / "input" / "competitions" / SLUG).mkdir(parents=True)
    (tmp_path / "input" / "competitions" / SLUG / NAME).write_text(text)
    sub = run_final(tmp_path, monkeypatch, tmp_path / "input", None)
    assert sub is not None, capsys.readouterr().out
    assert sub["huge"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert sub["aaa"] == [{"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[1, 2], [3, 4]]}]
    # the same in the submission: one oversized cell loses that attempt, not the whole file
    raw = json.dumps(ANSWER).replace("[[9]]", "[[" + "9" * 5000 + "]]", 1)
    (tmp_path / "working" / "submission.json").write_text(raw)
    exec(compile(cell(2), "<final cell>", "exec"), {"__name__": "__main__"})
    sub = json.loads((tmp_path / "working" / "submission.json").read_text())
    assert sub["aaa"] == [{"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[8]]}] and sub["bbb"] == ANSWER["bbb"]


def test_the_cells_run_on_the_standard_library_alone_with_a_decoy(tmp_path) -> None:
    """Final cell in an interpreter that cannot import the package (as after a failed install)."""
    tree(tmp_path / "input", "2025")
    (tmp_path / "working").mkdir()
    (tmp_path / "working" / "submission.json").write_text(json.dumps(ANSWER))
    (tmp_path / "final.py").write_text(cell(2))
    check = "import sys; sys.modules['trm_core'] = None; exec(open(sys.argv[1]).read(), {'__name__': '__main__'})"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", check, str(tmp_path / "final.py")],
                          env={"TRM_KAGGLE_INPUT": str(tmp_path / "input"),
                               "TRM_KAGGLE_WORKING": str(tmp_path / "working"), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "working" / "submission.json").read_text()) == ANSWER


@pytest.mark.parametrize("decoy_dir", ["competitions/arc-prize-2024", "arc-prize-2024"])
def test_the_whole_notebook_answers_the_competition_beside_a_decoy(tmp_path: Path, decoy_dir: str) -> None:
    try:
        version = metadata.version("trm-kit")
    except metadata.PackageNotFoundError:
        pytest.skip("trm-kit is not installed in this environment (pip install -e .)")
    manifest, comp = kaggle_tree(tmp_path, False, version)
    (tmp_path / "input" / decoy_dir).mkdir(parents=True, exist_ok=True)
    (tmp_path / "input" / decoy_dir / NAME).write_text(json.dumps(DECOY))
    proc, work = run_with_stand_in_runner(tmp_path, manifest["bundle_id"], version)
    assert proc.returncode == 0 and "fake runner done" in proc.stdout, proc.stdout + proc.stderr
    args = json.loads((work / "runner-args.json").read_text())
    assert Path(args["input_dir"]) == comp / NAME
    sub = json.loads((work / "submission.json").read_text())
    assert_valid(sub)  # the real tasks' ids, the stand-in runner's answer kept
    assert sub["aaa"] == [{"attempt_1": [[9]], "attempt_2": [[8]]}]


# ---- settings that would write a broken cell ------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_times_never_reach_a_cell(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        NotebookSettings(bundle_id="x", trm_version="0", time_limit_s=value)
    with pytest.raises(ValueError, match="finite"):
        NotebookSettings(bundle_id="x", trm_version="0", kill_grace_s=value)
    with pytest.raises(ValueError, match="TIME_LIMIT_S"):
        fill_template("cell_run.py", {"TIME_LIMIT_S": value})


@pytest.mark.parametrize("value", ["../x", "a/b", "Arc Prize", "-x"])
def test_a_competition_that_is_not_one_folder_name_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="competition"):
        NotebookSettings(bundle_id="x", trm_version="0", competition=value)


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "0", "-5"])
def test_the_dry_run_refuses_a_budget_that_is_not_a_positive_finite_time(budget: str) -> None:
    from click.testing import CliRunner

    from bundle.cli import dry_run_cmd

    result = CliRunner().invoke(dry_run_cmd, ["--budget", budget])
    assert result.exit_code == 1 and "--budget" in result.output, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ValueError, NameError))
