"""Helpers for the report tests: a small hand-made run folder whose answers are known, and a reader
that finds every drawn grid in the page and decodes its picture."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from trm_lab.report import BASELINE_FILE, PREDICTIONS_FILE
from trm_core.submission_file import build_submission, write_submission
from trm_core.tasks import Task, write_kaggle
from trm_core.predictions import Predictions
from trm_core.vote import vote

VOID = {"img", "input", "meta", "br", "hr", "link"}


def g(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, np.uint8)


def tiny_tasks() -> list[Task]:
    """Three tasks: 'solved' (one test input), 'split' (two test inputs, the second a 30x30 grid),
    'silent' (no prediction at all)."""
    rng = np.random.default_rng(0)
    big_in = rng.integers(0, 10, (30, 30)).astype(np.uint8)
    return [
        Task("solved", [(g([[1, 2], [3, 4]]), g([[4, 3], [2, 1]]))], [g([[5, 6], [7, 8]])], [g([[8, 7], [6, 5]])]),
        Task("split", [(g([[0, 1, 2]]), g([[2, 1, 0]])), (g([[3], [4]]), g([[4], [3]]))],
             [g([[9, 0, 1]]), big_in], [g([[1, 0, 9]]), big_in[::-1].copy()]),
        Task("silent", [(g([[7]]), g([[7, 7]]))], [g([[6]])], [g([[6, 6]])]),
    ]


def predictions(tasks: list[Task]) -> Predictions:
    """'solved' test 0: 5 views give the truth, 2 another grid (right at attempt 1).
    'split' test 0: 4 views a wrong grid, 3 the truth (right at attempt 2); test 1: 3 views a wrong
    30x30 grid and 1 an empty 0x0 grid (wrong). 'silent': nothing."""
    solved, split = tasks[0], tasks[1]
    p = Predictions()
    for v in range(5):
        p.append("solved", 0, v, solved.test_outputs[0], 2.0)
    for v in range(5, 7):
        p.append("solved", 0, v, g([[1, 1], [1, 1]]), -1.0)
    for v in range(4):
        p.append("split", 0, v, g([[3, 3, 3]]), 0.5)
    for v in range(4, 7):
        p.append("split", 0, v, split.test_outputs[0], 1.0)
    wrong_big = (split.test_outputs[1] + 1) % 10
    for v in range(3):
        p.append("split", 1, v, wrong_big, 0.0)
    p.append("split", 1, 3, np.zeros((0, 0), np.uint8), 0.0)
    return p


def baseline_predictions() -> Predictions:
    p = Predictions()
    for v in range(3):
        p.append("solved", 0, v, g([[2, 2], [2, 2]]), 0.0)
    return p


def make_run(folder: Path, *, with_metrics: bool = True, with_study: bool = False) -> Path:
    """A run folder with every file the report reads; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = tiny_tasks()
    write_kaggle(tasks, folder / "challenges.json", folder / "solutions.json")
    preds = predictions(tasks)
    preds.save(folder / PREDICTIONS_FILE)
    baseline_predictions().save(folder / BASELINE_FILE)
    challenges = json.loads((folder / "challenges.json").read_text())
    write_submission(folder / "submission.json", build_submission(vote(preds), challenges), challenges)
    if with_metrics:
        with open(folder / "metrics.jsonl", "w") as f:
            for step in (10, 20, 30):
                f.write(json.dumps({"step": step, "loss": 2.0 / step, "accuracy": 0.3 + step / 100,
                                    "exact_accuracy": step / 100, "samples_per_s": 50.0, "lr": 1e-3}) + "\n")
            f.write('{"step": 40, "loss"')  # a torn last line, as a crash leaves it
    if with_study:
        (folder / "study.json").write_text(json.dumps(STUDY))
    return folder


STUDY = {"config": {"tasks": 3, "steps": [0, 50, 100]},
         "arms": {"full": {"curve": [  # out of step order on purpose: the report sorts
             {"step": 0, "demo_loss": 1.5, "demo_token_accuracy": 0.4, "demo_exact_accuracy": 0.0, "pass@1": 0.0,
              "pass@2": 0.0, "oracle": 0.25, "test_inputs": 4},
             {"step": 100, "demo_loss": 0.5, "demo_token_accuracy": 0.9, "demo_exact_accuracy": 0.75, "pass@1": 0.25,
              "pass@2": 0.5, "oracle": 0.75, "test_inputs": 4},
             {"step": 50, "demo_loss": 0.9, "demo_token_accuracy": 0.7, "demo_exact_accuracy": 0.25, "pass@1": 0.25,
              "pass@2": 0.25, "oracle": 0.5, "test_inputs": 4}], "wall_s": 12.5},
                  "lora": {"curve": [
             {"step": 0, "demo_loss": 1.5, "demo_token_accuracy": 0.4, "demo_exact_accuracy": 0.0, "pass@1": 0.0,
              "pass@2": 0.0, "oracle": 0.25, "test_inputs": 4},
             {"step": 100, "demo_loss": 1.1, "demo_token_accuracy": 0.6, "demo_exact_accuracy": 0.125, "pass@1": 0.0,
              "pass@2": 0.125, "oracle": 0.5, "test_inputs": 4}], "wall_s": 8.0}}}


class Page(HTMLParser):
    """Every <figure class="grid"> with the task, test input and section it sits in, and its picture;
    every element's tag and attributes; the text of every table cell."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.figures: list[dict] = []
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.tasks: list[str] = []
        self.tests: dict[str, list[int]] = {}
        self.sections: list[str] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def _context(self, key: str) -> str | None:
        for _, attrs in reversed(self.stack):
            if key in attrs:
                return attrs[key]
        return None

    def handle_starttag(self, tag: str, attrs_list: list) -> None:
        attrs = {k: v or "" for k, v in attrs_list}
        self.elements.append((tag, attrs))
        if tag == "section" and "data-task" in attrs:
            self.tasks.append(attrs["data-task"])
            self.tests[attrs["data-task"]] = []
        if tag == "section" and "part" in attrs.get("class", ""):
            self.sections.append(attrs["id"])
        if tag == "div" and "data-test" in attrs:
            self.tests[self._context("data-task")].append(int(attrs["data-test"]))
        if tag == "figure" and "grid" in attrs.get("class", "").split():
            self.figures.append({"task": self._context("data-task"), "test": self._context("data-test"),
                                 "section": self._context("id"), **attrs})
        if tag == "img" and self.stack and self.stack[-1][0] == "figure":
            self.figures[-1]["src"] = attrs["src"]
        if tag == "td":
            self._cell = []
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def decode_png(data: bytes) -> np.ndarray:
    """The 8-bit RGB, filter-0 PNGs trm_lab.draw writes, as [H, W, 3] uint8."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
            size = (h, w)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    h, w = size
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert not rows[:, 0].any(), "filter type 0 expected"
    return rows[:, 1:].reshape(h, w, 3)


def figure_picture(fig: dict) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert fig["src"].startswith(prefix)
    return decode_png(base64.b64decode(fig["src"][len(prefix):]))
