"""The dynamic prediction queue (submission/workqueue.py, predicting.py's dynamic mode): items are
whole tasks ordered largest first, each claimed by exactly one worker, taken by whichever worker is
free; the retry policy applies per item (a crash costs that item's attempt, an item failing every
try is given up while the others are kept); --predict-queue static is the fixed-shard path, its
files what the engine's shard prediction makes; dynamic predicts the same views."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from submission.assemble import merge_shards
from submission.clock import Deadlines
from submission.dispatch import Dispatcher
from submission.jobs import read_job
from submission.attempts import Prediction
from submission.predicting import saved_views
from submission.retry import RetryPolicy, Try
from submission.workqueue import Item, Queue, cut, even_batch
from trm_core.submission_file import validate

CHALLENGES = json.loads((Path(__file__).resolve().parent.parent / "submission" / "placeholder" /
                         "arc-agi_test_challenges.json").read_text())

# ---- items and the queue folder ---------------------------------------------------------------------


def test_items_are_whole_tasks_ordered_largest_first() -> None:
    rows = {"a": 8, "b": 40, "c": 8, "d": 4, "e": 16, "f": 4}
    items = cut(rows, workers=2, batch=8, per_worker=2)  # at most 80 / 4 = 20 rows an item
    assert [it.task_ids for it in items] == [("b",), ("e",), ("a",), ("c",), ("d",), ("f",)]
    assert [it.rows for it in items] == [40, 16, 8, 8, 4, 4] and [it.order for it in items] == list(range(6))
    assert [it.attempt.predict_batch for it in items] == [8] * 6  # 40 rows: 5 batches of 8; 4 rows: one of 8
    assert all(it.attempt == Try("predict", predict_batch=it.attempt.predict_batch, shards=((0, 1),)) for it in items)
    assert [it.task_ids for it in cut({"s": 2, "m": 10, "l": 30}, 1, 4, 3)] == [("l",), ("m",), ("s",)]


def test_an_items_batches_are_even_not_a_full_one_and_padding() -> None:
    assert even_batch(514, 256) == 176  # 3 batches of 176 (528 rows: 14 padding), not 256 + 256 + 2
    assert even_batch(512, 256) == 256 and even_batch(257, 256) == 136 and even_batch(40, 256) == 40
    assert even_batch(3, 256) == 8 and even_batch(6, 4) == 4  # a multiple of 8 when the batch allows it
    for rows in range(1, 2000, 7):
        b = even_batch(rows, 256)
        assert b <= 256 and -(-rows // b) == -(-rows // 256)  # as many batches as full ones would take
        assert -(-rows // b) * b - rows < 8 * -(-rows // 256)  # padding: under 8 rows a batch


def test_items_shrink_towards_the_end_and_hold_every_task_once() -> None:
    rng = np.random.default_rng(0)
    rows = {f"t{i}": int(rng.choice([16, 16, 32, 48])) for i in range(400)}
    items = cut(rows, workers=4, batch=16)
    sizes = [it.rows for it in items]
    cap = -(-sum(rows.values()) // (4 * 8))
    assert sizes == sorted(sizes, reverse=True)  # largest first
    assert all(it.rows <= cap or len(it.task_ids) == 1 for it in items)
    assert sizes[-1] <= cap / 4  # the last items taken are small: a slow worker's last item costs little
    assert sorted(t for it in items for t in it.task_ids) == sorted(rows)  # every task once, never split
    for it in items:  # each item is a run of consecutive tasks
        ids = [int(t[1:]) for t in it.task_ids]
        assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_each_item_is_claimed_by_exactly_one_worker(tmp_path: Path) -> None:
    q = Queue(tmp_path / "q").make()
    items = cut({f"t{i}": 1 + i % 5 for i in range(60)}, workers=4, batch=2, per_worker=15)
    for it in items:
        q.put(it)
    taken: dict[str, list[int]] = {f"w{i}": [] for i in range(4)}

    def worker(name: str) -> None:
        while (it := q.claim(name)) is not None:
            taken[name].append(it.order)
            q.finish(name, it, {"records": it.rows, "complete": True, "seconds": 0.0})

    threads = [threading.Thread(target=worker, args=(n,)) for n in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = sorted(o for orders in taken.values() for o in orders)
    assert claimed == list(range(len(items)))  # none twice, none missed
    assert all(orders == sorted(orders) for orders in taken.values())  # each worker took them in queue order
    assert q.waiting() == 0 and len(q.finished()) == len(items) and not list(q.taken.iterdir())


def test_a_malformed_item_is_named() -> None:
    with pytest.raises(ValueError, match="work item needs"):
        Item.from_json({"id": 1, "order": 0})
    good = cut({"a": 4}, 1, 2)[0].to_json()
    with pytest.raises(ValueError, match="q0: needs task ids"):
        Item.from_json({**good, "task_ids": []})
    assert Item.from_json(good) == cut({"a": 4}, 1, 2)[0]


# ---- the runner's side, with stand-in workers ------------------------------------------------------


class _Handle:
    def __init__(self, name: str) -> None:
        self.name, self.rc, self.cancel = name, None, threading.Event()

    def poll(self) -> int | None:
        return self.rc

    def kill(self, quiet: bool = False) -> None:
        self.cancel.set()


class FakeLauncher:
    """Workers as threads that take items from the job's queue: `slow` seconds per row for the
    workers named in it (`fast` for the others); an item whose id is in `crash` fails on as many of
    its first attempts, the worker writing a failed result and leaving the item taken."""

    def __init__(self, slow: dict[str, float], fast: float, crash: dict[int, int]) -> None:
        self.slow, self.fast, self.crash = slow, fast, crash

    def start(self, job_path: Path, *, name: str, nprocs: int = 1, distributed: bool = False,
              gpus: str | None = None, cpu: bool = True) -> _Handle:
        handle = _Handle(name)
        job = read_job(job_path)
        per_row = next((s for w, s in self.slow.items() if name.endswith(w)), self.fast)

        def work() -> None:
            q, done = Queue(Path(job.queue)), []
            result = {"ok": True, "items": done, "started_at": time.time()}
            while (item := q.claim(job.name)) is not None:
                if item.attempt.index < self.crash.get(item.id, 0):
                    result.update(ok=False, error="crash", part="predict", message=f"crash in q{item.id}")
                    break
                time.sleep(per_row * item.rows)
                for r, w in item.attempt.shards:
                    Path(f"{job.prefix}-a{item.attempt.index}-q{item.id}-r{r}of{w}.npz").write_bytes(b"")
                q.finish(job.name, item, {"records": item.rows, "complete": True, "seconds": per_row * item.rows})
                done.append({"id": item.id, "attempt": item.attempt.index})
            result["ended_at"] = time.time()
            (Path(job.job_dir) / "result.rank0.json").write_text(json.dumps(result))
            handle.rc = 0 if result["ok"] else 1

        threading.Thread(target=work, daemon=True).start()
        return handle


def _prediction(tmp_path: Path, launcher: FakeLauncher, tasks: dict[str, int], world: int = 2,
                attempts: int = 3) -> Prediction:
    now = time.time()
    times = replace(Deadlines.at_start(now, now + 600.0), grace_s=5.0)  # stall_s 60; killed 5 s past a stop
    dispatch = Dispatcher(launcher, tmp_path / "scratch", time.time, times)
    dispatch.common = {"challenges": "c.json", "task_ids": list(tasks), "canvas": 12, "checkpoint": "ckpt"}
    lines: list[str] = []
    return Prediction(dispatch, RetryPolicy(attempts), times, answers=None, log=lines.append, problem=lines.append,
                      folder=tmp_path / "predictions", world=world, test_inputs=sum(tasks.values()),
                      queue="dynamic", tasks=tasks)


def _go(p: Prediction, views: int = 4) -> tuple[list[str], str, list[dict]]:
    now = time.time()
    return p.run(Path("ckpt"), "adapted", "predict", views, 4, now + 30, None, provisional=False)


def test_a_free_worker_takes_more_items_than_a_slow_one(tmp_path: Path) -> None:
    tasks = {f"t{i}": 1 for i in range(16)}  # 16 items of 4 rows
    p = _prediction(tmp_path, FakeLauncher(slow={"w0": 0.02}, fast=0.005, crash={}), tasks)
    files, status, attempts = _go(p)
    assert status == "ok" and len(files) == 16 and p.record["items"] == 16
    per = p.record["per_worker"]
    assert per["w0"]["items"] + per["w1"]["items"] == 16
    assert per["w1"]["items"] > per["w0"]["items"]  # the slow worker took fewer, the phase did not wait on it
    assert saved_views(p.folder, "adapted") == {}  # empty stand-in files hold no records


def test_a_crashing_item_is_retried_and_the_others_are_done_once(tmp_path: Path) -> None:
    tasks = {f"t{i}": 1 for i in range(8)}
    p = _prediction(tmp_path, FakeLauncher(slow={}, fast=0.002, crash={3: 1}), tasks)
    files, status, attempts = _go(p)
    assert status == "ok (after retries)" and p.record["retried"] == [3] and not p.record["given_up"]
    assert any(a["error"] == "crash" for a in attempts)
    names = sorted(Path(f).name for f in files)
    assert "adapted-a1-q3-r0of1.npz" in names and "adapted-a0-q3-r0of1.npz" not in names
    assert len(names) == 8  # every item once: only the crashed one ran twice
    assert p.record["left"] == 0


def test_an_item_failing_every_try_is_given_up_and_the_others_kept(tmp_path: Path) -> None:
    tasks = {f"t{i}": 1 for i in range(8)}
    p = _prediction(tmp_path, FakeLauncher(slow={}, fast=0.002, crash={5: 99}), tasks, attempts=2)
    files, status, attempts = _go(p)
    assert status == "partial" and p.record["given_up"] == [5] and p.record["retried"] == [5]
    assert sorted(int(Path(f).name.split("-q")[1].split("-")[0]) for f in files) == [0, 1, 2, 3, 4, 6, 7]
    said = p.problem.__self__  # the list the stand-in's problems went to
    assert any("q5" in line and "given up after 2 attempt(s)" in line for line in said)


def test_out_of_memory_retries_the_item_in_half_size_shards(tmp_path: Path) -> None:
    item = cut({"a": 8}, 1, 4)[0]
    nxt = RetryPolicy(3).next("oom", "predict", item.attempt)
    assert nxt.shards == ((0, 2), (1, 2)) and nxt.predict_batch == 4 and nxt.index == 1


# ---- real workers, in-process: static is the engine's shards, dynamic the same views ----------------


pytestmark = pytest.mark.usefixtures("one_thread")


def _runner_run(tmp: Path, ckpt: Path, queue: str, **kw) -> tuple[dict, dict, RunnerOptions]:  # noqa: F821
    from submission.launch import InProcessLauncher
    from submission.run import Runner, RunnerOptions

    placeholder = Path(__file__).resolve().parent.parent / "submission" / "placeholder"
    now = time.time()
    opts = RunnerOptions(input_dir=placeholder, working_dir=tmp / "working", checkpoint=ckpt,
                         scratch_dir=tmp / "scratch", start_time=now, deadline=now + 60.0, views_min=2,
                         views_target=4, views_max=4, predict_batch=8, reserve_min_s=0.3, provisional_every_s=0.5,
                         save_every_s=0.3, max_steps=0, cpu_procs=2, predict_queue=queue, **kw)
    Runner(opts, launcher=InProcessLauncher(echo=lambda line: None), environ={}, echo=lambda line: None).run()
    record = json.loads((opts.working_dir / "trm-run" / "run.json").read_text())
    return json.loads((opts.working_dir / "submission.json").read_text()), record, opts


def _records(files: list[str]) -> dict[tuple, tuple]:
    from trm_core.predictions import Predictions

    out = {}
    for f in files:
        p = Predictions.load(f)
        for i in range(len(p)):
            task, test, variant, grid, q = p.record(i)
            assert (task, test, variant) not in out, f"{f}: view {(task, test, variant)} predicted twice"
            out[(task, test, variant)] = (np.asarray(grid), q)
    return out


def test_static_is_the_engines_shards_and_dynamic_predicts_the_same_views(tmp_path: Path,
                                                                          micro_checkpoint: Path) -> None:
    from trm_core import checkpoint
    from trm_core.config import PredictConfig
    from trm_core.predict import predict
    from trm_core.recipes import model_for_tasks
    from trm_core.tasks import TaskSet, load_tasks

    static_sub, static_rec, opts = _runner_run(tmp_path / "s", micro_checkpoint, "static")
    dynamic_sub, dynamic_rec, _ = _runner_run(tmp_path / "d", micro_checkpoint, "dynamic")
    plan = json.loads((opts.working_dir / "trm-run" / "plan.json").read_text())
    assert plan["predict_queue"] == "static" and static_rec["options"]["predict_queue"] == "static"
    s_phase = next(p for p in static_rec["phases"] if p["name"] == "raw")
    d_phase = next(p for p in dynamic_rec["phases"] if p["name"] == "raw")
    assert s_phase["status"] == d_phase["status"] == "ok" and d_phase["predict_queue"] == "dynamic"
    assert d_phase["queue"]["items"] > 2 and d_phase["queue"]["left"] == 0
    s_files, d_files = static_rec["predict"]["files"], dynamic_rec["predict"]["files"]
    assert sorted(Path(f).name for f in s_files) == ["raw-a0-r0of2.npz", "raw-a0-r1of2.npz"]

    # static: each shard file is exactly what trm_core.predict makes for that shard, as before the queue
    ids = static_rec["tasks"]["used_ids"]
    loaded = load_tasks(str(Path(static_rec["inputs"]["challenges"])), strict=False, max_side=12)
    ckpt = checkpoint.load(micro_checkpoint, verify=False)
    views = static_rec["predict"]["views"]
    for f in s_files:
        rank = int(Path(f).name.split("-r")[1].split("of")[0])
        model, variants, _ = model_for_tasks(ckpt, TaskSet(tasks={t: loaded.tasks[t] for t in ids}), views, 0)
        direct = predict(model, variants, PredictConfig(num_views=views, batch_size=8, order="variant"),
                         shard=(rank, 2))
        with np.load(f) as saved:
            direct.save(tmp_path / "direct.npz")
            with np.load(tmp_path / "direct.npz") as mine:
                assert sorted(saved.files) == sorted(mine.files)
                for key in saved.files:
                    assert np.array_equal(saved[key], mine[key]), (f, key)

    # dynamic: the same views, each once, the same grids and scores; its vote sees each test input's
    # views in view order (one item holds a task), so it is the vote of static's views in that order
    s, d = _records(s_files), _records(d_files)
    assert s.keys() == d.keys()
    assert all(np.array_equal(s[k][0], d[k][0]) and s[k][1] == d[k][1] for k in s)
    assert _top2(merge_shards(d_files)) == _top2(_in_order(s))
    assert validate(dynamic_sub, CHALLENGES) == [] and dynamic_rec["predict"]["from_model"] == \
        static_rec["predict"]["from_model"]


def _in_order(records: dict[tuple, tuple]):
    from trm_core.predictions import Predictions

    out = Predictions()
    for key in sorted(records):
        out.append(*key, *records[key])
    return out


def _top2(preds) -> dict[tuple, list[bytes]]:
    from trm_core.vote import vote

    v = vote(preds)
    return {pair: [c.grid.tobytes() + bytes(c.grid.shape) for c in v.candidates(*pair)[:2]] for pair in v.pairs}


def test_progress_counts_each_items_file_apart(tmp_path: Path) -> None:
    from trm_core.predictions import Predictions

    for name, n in (("adapted-a0-q3-r0of1.npz", 3), ("adapted-a1-q3-r0of1.npz", 5), ("adapted-a0-q4-r1of2.npz", 2)):
        p = Predictions()
        for v in range(n):
            p.append("t", 0, v, np.zeros((2, 2), np.uint8), 0.0)
        p.save(tmp_path / name)
    assert saved_views(tmp_path, "adapted") == {"q3-r0of1": 5, "q4-r1of2": 2}  # an item's latest try, not summed
