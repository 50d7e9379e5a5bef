"""The HTML report and `trm show`: every task and test input appears, every drawn grid has the right
cells in the ARC palette, right/wrong marks match the solutions, the page references nothing outside
itself, plots come through matplotlib when it is installed and the page still works without it, the
study section, and the commands."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from report_helpers import STUDY, Page, decode_png, figure_picture, make_run, tiny_tasks
from trm_lab import draw
from trm_cli import main
from trm_lab.page import PLOTS_HINT, esc
from trm_lab.report import load_run, write_report
from trm_core.predictions import Predictions
from trm_core.vote import vote


@pytest.fixture()
def no_matplotlib(monkeypatch):
    """Make `import matplotlib...` fail, as on an install without the report extra (and keep the tests
    about grids and tables fast: a plot takes a second or more on a loaded 2-core machine)."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", with_study=True)


def _page(run_dir: Path) -> tuple[str, Page]:
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    return text, Page(text)


def assert_picture(fig: dict, grid: np.ndarray) -> None:
    """The figure's picture is `grid`: its size, every cell's colour, the border lines."""
    grid = np.asarray(grid)
    h, w = grid.shape
    assert (int(fig["data-rows"]), int(fig["data-cols"])) == (h, w)
    cell = int(fig["data-cell"])
    img = figure_picture(fig)
    assert img.shape == (*draw.picture_size(h, w, cell), 3)
    for i in range(h):
        for j in range(w):
            top, left, bottom, right = draw.cell_box(i, j, cell)
            block = img[top:bottom, left:right].reshape(-1, 3)
            assert (block == draw.PALETTE[grid[i, j]]).all(), (fig["data-role"], i, j)
            assert (img[top - 1, left] == draw.BORDER).all() and (img[top, left - 1] == draw.BORDER).all()
    assert (img[-1] == draw.BORDER).all() and (img[:, -1] == draw.BORDER).all()


def test_every_task_and_test_input_appears_solved_first(run_dir: Path, no_matplotlib) -> None:
    text, page = _page(run_dir)
    tasks = tiny_tasks()
    assert page.tasks == ["solved", "split", "silent"]  # solved, then partly, then not solved
    for t in tasks:
        assert page.tests[t.id] == list(range(len(t.test_inputs)))
        inputs = [f for f in page.figures if f["task"] == t.id and f["data-role"] == "test-input"]
        assert [int(f["test"]) for f in inputs] == list(range(len(t.test_inputs)))
    assert page.sections == ["summary", "training", "study", "tasks"]
    assert 'class="task solved"' in text and text.count('class="task solved"') == 1


def test_each_grid_has_its_cells_colours_and_shape(run_dir: Path, no_matplotlib) -> None:
    _, page = _page(run_dir)
    tasks = {t.id: t for t in tiny_tasks()}
    sub = json.loads((run_dir / "submission.json").read_text())
    votes = vote(Predictions.load(run_dir / "predictions.npz"))
    base = vote(Predictions.load(run_dir / "baseline-predictions.npz"))
    checked = 0
    for tid, task in tasks.items():
        figs = [f for f in page.figures if f["task"] == tid]
        demos = [f for f in figs if f["data-role"].startswith("demo-")]
        assert len(demos) == 2 * len(task.train)
        for k, (x, y) in enumerate(task.train):
            assert demos[2 * k]["data-role"] == "demo-input" and demos[2 * k + 1]["data-role"] == "demo-output"
            assert_picture(demos[2 * k], x)
            assert_picture(demos[2 * k + 1], y)
            checked += 2
        for i, x in enumerate(task.test_inputs):
            here = {}
            for f in figs:
                if f["test"] == str(i):
                    here.setdefault(f["data-role"], []).append(f)
            assert_picture(here["test-input"][0], x)
            assert_picture(here["truth"][0], task.test_outputs[i])
            for a in (1, 2):
                assert_picture(here[f"attempt-{a}"][0], np.array(sub[tid][i][f"attempt_{a}"]))
            checked += 4
            cands = votes.candidates(tid, i)
            drawn = here.get("candidate", [])
            assert len(drawn) == min(5, len(cands))
            for f, c in zip(drawn, cands):
                assert int(f["data-votes"]) == c.count
                if c.grid.size:
                    assert_picture(f, c.grid)
                    checked += 1
                else:
                    assert "src" not in f and (f["data-rows"], f["data-cols"]) == ("0", "0")
            if base.views(tid, i):
                attempts = base.attempts(tid, i, x)
                for a in (1, 2):
                    assert_picture(here[f"baseline-{a}"][0], attempts[a - 1])
                    checked += 1
            else:
                assert "baseline-1" not in here
    assert checked >= 25


def test_marks_match_the_solutions(run_dir: Path, no_matplotlib) -> None:
    _, page = _page(run_dir)
    tasks = {t.id: t for t in tiny_tasks()}
    sub = json.loads((run_dir / "submission.json").read_text())
    marks = {}
    for f in page.figures:
        if f["data-role"] in ("attempt-1", "attempt-2"):
            a = int(f["data-role"][-1])
            truth = tasks[f["task"]].test_outputs[int(f["test"])]
            right = np.array_equal(np.array(sub[f["task"]][int(f["test"])][f"attempt_{a}"]), truth)
            assert f["data-mark"] == ("right" if right else "wrong")
            marks[(f["task"], int(f["test"]), a)] = f["data-mark"]
    # the hand-made run: right at attempt 1, right at attempt 2, wrong twice, no prediction
    assert marks == {("solved", 0, 1): "right", ("solved", 0, 2): "wrong", ("split", 0, 1): "wrong",
                     ("split", 0, 2): "right", ("split", 1, 1): "wrong", ("split", 1, 2): "wrong",
                     ("silent", 0, 1): "wrong", ("silent", 0, 2): "wrong"}
    truths = [f for f in page.figures if f["data-role"] in ("test-input", "truth", "demo-input")]
    assert truths and all("data-mark" not in f for f in truths)
    right_cands = [f for f in page.figures if f["data-role"] == "candidate" and f.get("data-mark") == "right"]
    assert sorted((f["task"], f["test"]) for f in right_cands) == [("solved", "0"), ("split", "0")]


def test_summary_scores(run_dir: Path, no_matplotlib) -> None:
    _, page = _page(run_dir)
    cells = page.cells
    # rows: answers, pass@1, pass@2, oracle, right / test inputs, views per input
    i = cells.index("adapted (vote)")
    assert cells[i:i + 6] == ["adapted (vote)", "0.250", "0.500", "0.500", "2 / 4", "7"]
    i = cells.index("un-adapted (vote)")
    assert cells[i + 1:i + 5] == ["0.000", "0.000", "0.000", "0 / 4"]
    i = cells.index("submission.json")
    assert cells[i + 1:i + 5] == ["0.250", "0.500", "-", "2 / 4"]


def test_the_page_references_nothing_outside_itself(run_dir: Path, no_matplotlib) -> None:
    text, page = _page(run_dir)
    for tag, attrs in page.elements:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]
    assert not re.search(r"url\(|@import|https?://", text)
    csp = [a for t, a in page.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    # every in-page link has its target
    ids = {a["id"] for _, a in page.elements if "id" in a}
    assert all(a["href"][1:] in ids for _, a in page.elements if "href" in a)


def test_plots_with_matplotlib(run_dir: Path) -> None:
    pytest.importorskip("matplotlib")
    text, page = _page(run_dir)
    plots = [a for t, a in page.elements if t == "img" and a.get("class") == "plot"]
    assert len(plots) == 2  # the training curves and the study
    import base64

    for p in plots:
        png = base64.b64decode(p["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") > 300
    assert esc(PLOTS_HINT) not in text


def test_without_matplotlib_the_page_keeps_grids_and_tables(run_dir: Path, no_matplotlib) -> None:
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
    text, page = _page(run_dir)
    assert not [a for t, a in page.elements if t == "img" and a.get("class") == "plot"]
    assert text.count(esc(PLOTS_HINT)) == 2
    assert len([f for f in page.figures if "src" in f]) >= 25
    # the training table: the torn last line of metrics.jsonl is skipped
    i = page.cells.index("30")
    assert page.cells[i:i + 4] == ["30", "0.0667", "0.600", "0.300"]
    assert "40" not in page.cells


def test_study_section_from_a_hand_made_study_json(tmp_path: Path, no_matplotlib) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps(STUDY))
    text, page = _page(folder)  # only study.json: the library call a study makes
    assert page.sections == ["study"]
    cells = page.cells
    i = cells.index("full")
    # arm, last step, pass@1, pass@2, oracle, best pass@2, demo loss, demo exact, test inputs, wall s
    assert cells[i:i + 10] == ["full", "100", "0.250", "0.500", "0.750", "0.500 @ 100", "0.5000", "0.750", "4", "12.5"]
    i = cells.index("lora")
    assert cells[i:i + 4] == ["lora", "100", "0.000", "0.125"]
    assert "study configuration" in text


def test_grid_pictures_and_png_round_trip() -> None:
    grid = np.arange(12, dtype=np.uint8).reshape(3, 4) % 10
    img = draw.grid_image(grid, 5)
    assert img.shape == (3 * 6 + 1, 4 * 6 + 1, 3)
    assert (decode_png(draw.png_bytes(img)) == img).all()
    top, left, bottom, right = draw.cell_box(2, 3, 5)
    assert (img[top:bottom, left:right] == draw.PALETTE[grid[2, 3]]).all()
    with pytest.raises(ValueError, match="0x0"):
        draw.grid_image(np.zeros((0, 0), np.uint8), 5)
    with pytest.raises(ValueError, match="0..9"):
        draw.as_grid([[1, 10]])
    assert draw.PALETTE.shape == (10, 3) and len({tuple(c) for c in draw.PALETTE}) == 10


def test_load_run_notes_unreadable_files(tmp_path: Path, no_matplotlib) -> None:
    folder = make_run(tmp_path / "run", with_metrics=False)
    (folder / "baseline-predictions.npz").write_bytes(b"not an npz")
    run = load_run(folder)
    assert run.baseline is None and run.vote is not None
    assert any("baseline-predictions.npz" in n for n in run.notes)
    assert "baseline-predictions.npz" in write_report(folder).read_text()


# ---- the commands -----------------------------------------------------------------------------


def test_trm_report_of_a_training_folder(tmp_path: Path, no_matplotlib) -> None:
    folder = make_run(tmp_path / "run")
    for name in ("challenges.json", "solutions.json", "submission.json", "predictions.npz", "baseline-predictions.npz"):
        (folder / name).unlink()
    r = CliRunner().invoke(main, ["report", str(folder)])
    assert r.exit_code == 0, r.output
    page = Page((folder / "report.html").read_text())
    assert page.sections == ["training"] and page.cells[:2] == ["10", "0.2000"]


def test_trm_report_command(run_dir: Path, tmp_path: Path, no_matplotlib) -> None:
    r = CliRunner().invoke(main, ["report", str(run_dir), "--top", "1"])
    assert r.exit_code == 0, r.output
    page = Page((run_dir / "report.html").read_text())
    assert len([f for f in page.figures if f["data-role"] == "candidate"]) == 3  # one per test input with votes
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, ["report", str(empty)])
    assert r.exit_code == 1 and "nothing to report" in r.output


def test_trm_report_draws_a_timing_report(run_dir: Path, no_matplotlib) -> None:
    report = {"phases": [{"name": "train", "planned_s": 10.0, "actual_s": 12.5, "status": "ok"},
                         {"name": "fallback", "planned_s": None, "actual_s": 0.2, "status": "ok"}],
              "total": {"planned_s": 10.0, "actual_s": 12.7, "deviation": 0.27, "within_10pct": False,
                        "deadline_s": 30.0, "finished_before_deadline": True},
              "device": {"world": 1, "device": "cpu"}, "throughput": {}, "training": {}}
    (run_dir / "timing-report.json").write_text(json.dumps(report))
    r = CliRunner().invoke(main, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    page = Page((run_dir / "report.html").read_text())
    assert page.sections == ["summary", "timing", "training", "study", "tasks"]
    i = page.cells.index("train")
    assert page.cells[i:i + 4] == ["train", "10.0", "12.5", "ok"]
    assert "+27.0%" in page.cells


def test_trm_show_tasks_and_submissions(run_dir: Path, tmp_path: Path, no_matplotlib) -> None:
    runner = CliRunner()
    ch, so, sub = (str(run_dir / n) for n in ("challenges.json", "solutions.json", "submission.json"))
    out = tmp_path / "tasks.html"
    r = runner.invoke(main, ["show", ch, "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = Page(out.read_text())
    assert sorted(page.tasks) == ["silent", "solved", "split"]
    assert not [f for f in page.figures if "data-mark" in f]  # no attempts, nothing marked

    out = tmp_path / "sub.html"
    r = runner.invoke(main, ["show", sub, "--challenges", ch, "--solutions", so, "--task", "split", "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = Page(out.read_text())
    assert page.tasks == ["split"]
    assert [f["data-mark"] for f in page.figures if "data-mark" in f] == ["wrong", "right", "wrong", "wrong"]

    out = tmp_path / "sub.png"
    r = runner.invoke(main, ["show", sub, "--challenges", ch, "--solutions", so, "--png", "-o", str(out)])
    assert r.exit_code == 0, r.output
    img = decode_png(out.read_bytes())
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert {tuple(c) for c in draw.PALETTE} <= colours  # the 30x30 test grid uses every colour
    assert tuple(draw.RIGHT) in colours and tuple(draw.WRONG) in colours

    r = runner.invoke(main, ["show", sub])
    assert r.exit_code == 1 and "--challenges" in r.output
    r = runner.invoke(main, ["show", ch, "--task", "nope"])
    assert r.exit_code == 1 and "no task 'nope'" in r.output


def test_trm_evaluate_writes_a_run_folder(tmp_path: Path, no_matplotlib) -> None:
    folder = make_run(tmp_path / "src", with_metrics=False)
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(folder), "--data", str(folder / "challenges.json"),
                                  "--solutions", str(folder / "solutions.json"),
                                  "--predictions", str(folder / "predictions.npz"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("report.html", "predictions.npz", "submission.json", "coverage.json", "challenges.json",
                 "solutions.json"):
        assert (out / name).is_file(), name
    page = Page((out / "report.html").read_text())
    assert page.tasks == ["solved", "split", "silent"]
    assert json.loads((out / "submission.json").read_text()) == json.loads((folder / "submission.json").read_text())
    cov = json.loads((out / "coverage.json").read_text())
    assert cov["summary"]["kaggle"]["pass@2"] == 0.5


def test_trm_study_writes_its_report(tmp_path: Path, micro_checkpoint, no_matplotlib) -> None:
    from trm_core.tasks import write_kaggle

    small = [t for t in tiny_tasks() if t.id != "split"]  # the 30x30 grid does not fit the canvas
    write_kaggle(small, tmp_path / "c_challenges.json", tmp_path / "c_solutions.json")
    out = tmp_path / "study"
    r = CliRunner().invoke(main, ["study", "--checkpoint", str(micro_checkpoint), "--data",
                                  str(tmp_path / "c_challenges.json"), "--solutions", str(tmp_path / "c_solutions.json"),
                                  "--arms", "none,full", "--steps", "2", "--eval-every", "2", "--views", "2",
                                  "--variants", "1", "--batch-size", "2", "--warmup", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    study = json.loads((out / "study.json").read_text())
    page = Page((out / "report.html").read_text())
    assert page.sections == ["study"]
    i = page.cells.index("full")
    assert page.cells[i + 1] == "2" and page.cells[i + 3] == f"{study['arms']['full']['curve'][-1]['pass@2']:.3f}"
    assert page.cells[page.cells.index("none") + 1] == "0"
