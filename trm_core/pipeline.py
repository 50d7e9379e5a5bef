"""Flow 1 in one function: tasks -> post-train -> predict under K views -> vote -> submission.json.

`solve` is the paper's method at test time (TRM, arXiv 2511.02886): adapt a pre-trained checkpoint
to the new tasks on their demonstration pairs only, run every test input through the adapted model
under K augmented views (each answer mapped back by the view's inverse augmentation), vote across
the views, and write the two best candidates of each test input as its two attempts.

Its stages are the functions the notebook's worker jobs run one per process (recipes.posttrain,
recipes.model_for_tasks with predict.predict, vote.vote, submission_file.write_submission), so
`trm solve`, `trm predict`, the tests and the Kaggle run share one implementation of each step.

Inputs: a TaskSet, a checkpoint (loaded, or a path), a TrainConfig (or a number of planned
steps: the post-training recipe of trm_core.config.post_config builds the rest; None: predict with
the checkpoint as it is), a PredictConfig, and the raw challenges when some tasks did not load.
Output in out_dir: submission.json (written with the fallback before anything runs, then replaced
atomically by the voted answers: a valid file exists whatever fails), posttrain/ (the run folder:
checkpoint/, train_state.pt, metrics.jsonl) and predictions.npz (every view, for `trm evaluate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from trm_core import checkpoint as ckpt_io
from trm_core.checkpoint import Checkpoint, build_model
from trm_core.config import (POST_BATCH, POST_MODE, DataConfig, PredictConfig, TrainConfig, choose,
                             describe_settings, post_config)
from trm_core.fit import FitSchedule
from trm_core.loggers import MetricsLogger
from trm_core.predict import predict
from trm_core.recipes import model_for_tasks, posttrain, task_variants
from trm_core.submission_file import build_submission, complete_submission, readable_tasks, write_submission
from trm_core.tasks import TaskSet
from trm_core.train import TrainResult
from trm_core.predictions import PREDICTIONS_FILE, Predictions
from trm_core.vote import Vote, vote

SUBMISSION_FILE, POSTTRAIN_DIR = "submission.json", "posttrain"


@dataclass
class Solved:
    """What `solve` did, for the caller's summary line and for scoring."""

    submission: Path  # the submission.json written
    answers: dict[str, list]  # its content: {task_id: [{"attempt_1", "attempt_2"}, ...]}
    trained: TrainResult | None  # the post-training run (None: skipped, or stopped before it)
    adapted: bool  # the predictions used embedding rows trained on these tasks
    predictions: Predictions  # every view's answer (empty when stopped before predicting)
    vote: Vote | None  # the ranked candidates (None when nothing was predicted)


def _never() -> bool:
    return False


def solve(tasks: TaskSet, checkpoint: Checkpoint | str | os.PathLike, out_dir: str | os.PathLike,
          train_cfg: TrainConfig | int | None, predict_cfg: PredictConfig, stop: Callable[[], bool] | None = None, *,
          data: DataConfig = DataConfig(), challenges: Mapping[str, object] | None = None, init: str = "mean",
          rule: str = "reference", fill: str = "fallback", seed: int = 0, device: str = "cpu",
          train_deadline: float | None = None, log: Callable[[str], None] = lambda line: None,
          logger: MetricsLogger | None = None, fit: FitSchedule | None = None) -> Solved:
    """Solve `tasks` with `checkpoint`; every task of `challenges` (default: the tasks) gets an answer.

    `stop()` ends the stage under way cleanly (between steps or batches) and skips the rest; the
    submission then holds what was voted so far and the test input itself everywhere else.
    `train_deadline` (a time.time() value) ends post-training only; prediction follows.
    `logger` receives the post-training metrics (metrics.jsonl in out_dir/posttrain is always written).
    `fit` spends the post-training steps per task (trm_core/fit.py); None draws every task alike.
    """
    stop = stop or _never
    out = Path(out_dir)
    raw = dict(challenges) if challenges is not None else challenges_of(tasks)
    path = write_answers(out / SUBMISSION_FILE, {}, raw)  # the fallback first: valid from the start
    solved = Solved(path, {}, None, False, Predictions(), None)
    if not len(tasks) or stop():
        solved.answers = complete_submission({}, raw)
        return solved

    # 1. load the pre-trained checkpoint
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else ckpt_io.load(checkpoint)

    # 2. the augmented variants: each task's original and data.num_variants views of it, one
    #    embedding row each; post-training trains these rows, and prediction reads every test input
    #    through the same views, so the two stages are coupled here and nowhere else
    variants = task_variants(tasks, data)

    # 3. post-train on the demonstration pairs (test-time training; the test outputs stay unseen)
    if isinstance(train_cfg, int) and not isinstance(train_cfg, bool):
        train_cfg = recipe_config(ckpt, train_cfg, device)
        log(f"post-training settings: {describe_settings(asdict(train_cfg))}")
    if train_cfg is not None:
        log(f"post-train: {len(tasks)} tasks, {train_cfg.steps} steps of {train_cfg.global_batch_size}, "
            f"mode {train_cfg.mode}")
        solved.trained = posttrain(ckpt, tasks, train_cfg, data, out / POSTTRAIN_DIR, device=device, init=init,
                                   stop=lambda step: stop(), deadline=train_deadline, log=log,
                                   logger=logger, fit=fit, variants=variants)
        ckpt = ckpt_io.load(solved.trained.checkpoint)

    # 4. predict every test input under K of those views, each answer mapped back to the task's frame
    #    (without post-training: the checkpoint's own rows when it was adapted to these tasks, else
    #    fresh rows, the un-adapted baseline)
    if not stop():
        if solved.trained is not None:
            log(f"adapted checkpoint: {len(variants)} tasks, up to {predict_cfg.num_views} views each")
            solved.predictions = predict(build_model(ckpt), variants, predict_cfg, device=device, stop=stop, log=log)
            solved.adapted = True
        else:
            solved.predictions, solved.adapted = predict_views(ckpt, tasks, predict_cfg, seed=seed, device=device,
                                                               stop=stop, log=log)
        solved.predictions.save(out / PREDICTIONS_FILE)

    # 5. vote across the views: the two best candidates of each test input are its two attempts
    part: dict[str, list] = {}
    if len(solved.predictions):
        solved.vote = vote(solved.predictions, rule)
        part = build_submission(solved.vote, {t: raw[t] for t in tasks.tasks}, fill=fill)

    # 6. write submission.json: every task id, two attempts per test input, the test input where none
    solved.answers = complete_submission(part, raw)
    write_answers(path, solved.answers, raw)
    return solved


def recipe_config(ckpt: Checkpoint, steps: int, device: str = "cpu", mode: str = POST_MODE,
                  batch: int | None = None) -> TrainConfig:
    """The post-training recipe for `steps` planned steps of `ckpt` (its variant and EMA, the
    recipe's batch for the device kind): what `solve` trains with when given a step count."""
    chosen = choose(ckpt_io.manifest_recipe(ckpt.manifest, "the checkpoint's manifest"))
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return post_config(steps, batch or POST_BATCH[kind], mode, chosen)


def predict_views(ckpt: Checkpoint, tasks: TaskSet, cfg: PredictConfig, *, seed: int = 0, device: str = "cpu",
                  stop: Callable[[], bool] | None = None,
                  log: Callable[[str], None] = lambda line: None) -> tuple[Predictions, bool]:
    """Every test input of `tasks` under the first cfg.num_views views; the bool says whether the
    checkpoint's embedding rows were trained on these tasks (else fresh rows: the un-adapted baseline)."""
    model, variants, adapted = model_for_tasks(ckpt, tasks, cfg.num_views, seed)
    log(f"{'adapted' if adapted else 'un-adapted'} checkpoint: {len(variants)} tasks, "
        f"up to {cfg.num_views} views each")
    return predict(model, variants, cfg, device=device, stop=stop, log=log), adapted


def challenges_of(tasks: TaskSet) -> dict[str, object]:
    """Challenges content ({task_id: {"test": [{"input": grid}, ...]}}) of tasks already loaded."""
    return {t.id: {"test": [{"input": x.tolist()} for x in t.test_inputs]} for t in tasks.tasks.values()}


def write_answers(path: str | os.PathLike, part: Mapping[str, list], raw: Mapping[str, object]) -> Path:
    """Write a submission for every task of `raw` (raw challenges, unreadable tasks included): part's
    entries where they are complete, the fallback elsewhere; validated, then replaced atomically."""
    readable = readable_tasks(raw)
    return write_submission(path, complete_submission(part, raw), readable if len(readable) == len(raw) else None)
