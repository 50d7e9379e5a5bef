"""Prediction that stops when the answer is settled: the early-exit rules (q-halt, stable), the
adaptive view count (rounds, `settled`), the halt-steps limit, and the switches-off bit identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trm_core import checkpoint
from trm_core.batches import PredictViews
from trm_cli import main
from trm_core.encoding import COLOR_OFFSET, crop_batch
from trm_core.model import TRM, Carry, TRMConfig
from trm_core.config import PredictConfig
from trm_core.predict import predict, predict_batch_exit, settled
from trm_core.predictions import Predictions
from trm_core.tasks import load_tasks
from trm_core.variants import Variants
from trm_core.vote import vote

PLACEHOLDER = Path(__file__).resolve().parent.parent / "submission" / "placeholder"
CHALLENGES = PLACEHOLDER / "arc-agi_test_challenges.json"
SOLUTIONS = PLACEHOLDER / "arc-agi_test_solutions.json"
CANVAS = 12


def _tasks():
    return load_tasks(CHALLENGES, solutions=SOLUTIONS)


class Scripted(torch.nn.Module):
    """An ACT model whose row with puzzle id r answers grid tokens[r, t] and q_halt q[r, t] at step t + 1,
    with model.forward's carry semantics (halted rows restart on the batch row). Records the rows of
    every call, so a test sees exited rows leave the batch."""

    def __init__(self, tokens: torch.Tensor, q: torch.Tensor) -> None:
        super().__init__()
        self.config = TRMConfig.from_name("tiny", canvas=CANVAS, halt_max_steps=tokens.shape[1])
        self.tokens, self.q = tokens, q  # [R, T, S] long, [R, T] float
        self.calls: list[int] = []

    def initial_carry(self, batch):
        B = batch["inputs"].shape[0]
        z = torch.zeros(B, 1, 1)
        return Carry(z, z.clone(), torch.zeros(B, dtype=torch.int32), torch.ones(B, dtype=torch.bool),
                     {k: torch.zeros_like(v) for k, v in batch.items()})

    def forward(self, carry, batch):
        halted = carry.halted
        steps = torch.where(halted, 0, carry.steps) + 1
        data = {k: torch.where(halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
                for k, v in carry.current_data.items()}
        self.calls.append(int(halted.shape[0]))
        ids, t = data["puzzle_identifiers"].long(), steps.long() - 1
        logits = torch.nn.functional.one_hot(self.tokens[ids, t], self.config.vocab_size).float()
        q = self.q[ids, t]
        out = {"logits": logits, "q_halt_logits": q, "q_continue_logits": torch.zeros_like(q)}
        return Carry(carry.z_H, carry.z_L, steps, steps >= self.config.halt_max_steps, data), out


def _grid(colour: int) -> torch.Tensor:
    """A 2x2 grid of one colour on the canvas, as tokens [S]."""
    board = torch.zeros(CANVAS, CANVAS, dtype=torch.long)
    board[:2, :2] = COLOR_OFFSET + colour
    board[2, :2] = 1
    board[:2, 2] = 1
    return board.view(-1)


def _scripted(sequences: list[str], q: list[list[float]] | None = None) -> tuple[Scripted, dict]:
    """Row r's grid at step t is the colour of letter sequences[r][t] ('a' = 0)."""
    tokens = torch.stack([torch.stack([_grid(ord(c) - ord("a")) for c in seq]) for seq in sequences])
    q_t = torch.tensor(q, dtype=torch.float32) if q is not None else -torch.ones(tokens.shape[:2])
    B = len(sequences)
    batch = {"inputs": torch.zeros(B, CANVAS * CANVAS, dtype=torch.int32),
             "labels": torch.zeros(B, CANVAS * CANVAS, dtype=torch.int32),
             "puzzle_identifiers": torch.arange(B, dtype=torch.int32)}
    return Scripted(tokens, q_t), batch


def _colours(tokens: torch.Tensor) -> list[str]:
    return [chr(ord("a") + int(g[0, 0])) for g in crop_batch(tokens.numpy(), CANVAS)]


# ---- early exit ---------------------------------------------------------------------------------


def test_stable_rule_reads_the_final_grid_whenever_no_earlier_run_is_long_enough() -> None:
    # every sequence's only run of 3 equal grids (2 unchanged steps) is its last one: the answer must not change
    seqs = ["abbcccc", "aabbccc", "abcdeff", "aaaaaaa", "ababab" + "b", "bbaabbb"]
    model, batch = _scripted(seqs)
    tokens, _, used = predict_batch_exit(model, batch, 7, "stable", stable_steps=2)
    assert _colours(tokens) == [s[-1] for s in seqs]
    assert used.tolist() == [6, 7, 7, 3, 7, 7]
    assert model.calls == [6, 6, 6, 5, 5, 5, 4]  # "aaaaaaa" left after step 3, "abbcccc" after step 6


def test_stable_rule_exits_on_the_first_long_enough_run_and_never_on_a_shorter_one() -> None:
    model, batch = _scripted(["aaab", "aabb", "abab"])
    tokens, _, used = predict_batch_exit(model, batch, 4, "stable", stable_steps=2)
    assert _colours(tokens) == ["a", "b", "b"] and used.tolist() == [3, 4, 4]
    model, batch = _scripted(["aaab", "aabb"])
    tokens, _, used = predict_batch_exit(model, batch, 4, "stable", stable_steps=1)
    assert _colours(tokens) == ["a", "a"] and used.tolist() == [2, 2]


def test_q_halt_rule_reads_a_view_at_its_first_halt_and_the_last_step_otherwise() -> None:
    q = [[-1.0, 0.5, -1.0, 2.0], [-1.0, -1.0, -1.0, -1.0], [3.0, 3.0, 3.0, 3.0]]
    model, batch = _scripted(["abcd", "abcd", "abcd"], q)
    tokens, q_out, used = predict_batch_exit(model, batch, 4, "q-halt")
    assert _colours(tokens) == ["b", "d", "a"]
    assert used.tolist() == [2, 4, 1]
    assert q_out.tolist() == [0.5, -1.0, 3.0]  # the q_halt of the step read
    assert model.calls == [3, 2, 1, 1]
    model, batch = _scripted(["abcd"], [[-1.0, 0.0, -1.0, -1.0]])  # q_halt = 0 is not a halt (> 0, as in training)
    assert predict_batch_exit(model, batch, 4, "q-halt")[2].tolist() == [4]


def test_halt_steps_above_the_limit_is_refused_not_wrapped(tmp_path: Path) -> None:
    tasks = _tasks()
    variants = Variants(tasks, 1, seed=0)
    model = TRM(TRMConfig.from_name("tiny", canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers),
                generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="halt_steps 6 is above the model's halt_max_steps 4"):
        predict(model, variants, PredictConfig(num_views=2, batch_size=8, halt_steps=6))
    checkpoint.save(checkpoint.slim(checkpoint.from_model(model, {"weights": "raw"})), tmp_path / "kit")
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "kit"), "--data", str(CHALLENGES),
                                       "--views", "2", "--halt-steps", "6", "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 1 and "halt_max_steps 4" in result.output and "Traceback" not in result.output


# ---- switches off: the same bits as the reference loop ------------------------------------------


def _reference_records(model: TRM, variants: Variants, views: int, batch_size: int) -> Predictions:
    """Today's prediction loop written out: every batch, halt_max_steps model calls, crop, invert."""
    preds = Predictions()
    with torch.inference_mode():
        for batch in PredictViews(variants, views, batch_size, canvas=CANVAS, order="variant"):
            tensors = batch.tensors()
            carry = model.initial_carry(tensors)
            for _ in range(model.config.halt_max_steps):
                carry, out = model(carry, tensors)
            tokens = out["logits"].argmax(-1).numpy()
            for grid, view, q in zip(crop_batch(tokens, CANVAS), batch.views, out["q_halt_logits"].float().numpy()):
                if view is not None:
                    preds.append(view.task_id, view.test_index, view.variant, view.augmentation.invert(grid), float(q))
    return preds


def _same(a: Predictions, b: Predictions) -> None:
    assert len(a) == len(b) > 0
    for name in ("task", "test_index", "variant", "q_halt", "start", "data"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.task_ids == b.task_ids


@pytest.fixture(scope="module")
def tiny() -> tuple[TRM, Variants]:
    variants = Variants(_tasks(), 5, seed=3)
    model = TRM(TRMConfig.from_name("tiny", canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers),
                generator=torch.Generator().manual_seed(1))
    return model, variants


def test_switches_off_give_the_reference_loop_bit_for_bit(tiny, tmp_path: Path) -> None:
    model, variants = tiny
    expected = _reference_records(model, variants, 6, 10)
    status: dict = {}
    got = predict(model, variants, PredictConfig(num_views=6, batch_size=10), status=status)
    _same(got, expected)
    got.save(tmp_path / "a.npz")
    expected.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert status["act_steps"] == status["act_steps_full"] == len(got) * 4
    assert status["views"] == status["views_full"] == len(got)


def test_rules_that_never_fire_give_the_same_bits(tiny) -> None:
    model, variants = tiny
    expected = _reference_records(model, variants, 6, 10)
    # stable needs 4 unchanged steps, impossible in 4 steps: every view runs them all
    _same(predict(model, variants, PredictConfig(num_views=6, batch_size=10, exit_rule="stable", stable_steps=4)),
          expected)
    never = TRM(model.config, generator=torch.Generator().manual_seed(1))
    never.load_state_dict(model.state_dict())
    with torch.no_grad():
        never.q_head.weight.zero_()
        never.q_head.bias.fill_(-5.0)  # q_halt < 0 everywhere: the q-head never halts
    status: dict = {}
    got = predict(never, variants, PredictConfig(num_views=6, batch_size=10, exit_rule="q-halt"), status=status)
    _same(got, _reference_records(never, variants, 6, 10))
    assert status["act_steps"] == status["act_steps_full"]


def test_q_halt_exit_on_a_real_model_counts_the_saved_steps(tiny) -> None:
    model, variants = tiny
    halts = TRM(model.config, generator=torch.Generator().manual_seed(1))
    halts.load_state_dict(model.state_dict())
    with torch.no_grad():
        halts.q_head.weight.zero_()
        halts.q_head.bias.fill_(5.0)  # halts at step 1: every view is read after one step
    status: dict = {}
    got = predict(halts, variants, PredictConfig(num_views=6, batch_size=10, exit_rule="q-halt"), status=status)
    one_step = predict(halts, variants, PredictConfig(num_views=6, batch_size=10, halt_steps=1))
    assert np.array_equal(got.data, one_step.data) and np.array_equal(got.start, one_step.start)
    assert status["act_steps"] == len(got) and status["act_steps_full"] == 4 * len(got)


# ---- adaptive view count ------------------------------------------------------------------------


def _records(entries: list[tuple[int, float]], task: str = "t") -> Predictions:
    """One test input's records: (colour of a 1x1 grid, or -1 for 0x0; q_halt logit)."""
    preds = Predictions()
    for v, (colour, q) in enumerate(entries):
        grid = np.zeros((0, 0), np.uint8) if colour < 0 else np.full((1, 1), colour, np.uint8)
        preds.append(task, 0, v, grid, q)
    return preds


def test_settled_is_exact_for_the_count_ranked_rules() -> None:
    recs = [(1, 0.0)] * 5 + [(2, 0.0)] * 4 + [(3, 0.0)]  # counts 5, 4, 1
    for rule in ("reference", "count"):
        voted = vote(_records(recs), rule)
        assert settled(voted, "t", 0, 2)  # 4 > 1 + 2: the 3rd cannot reach the 2nd
        assert not settled(voted, "t", 0, 3)  # 4 = 1 + 3: a tie, decided by views not seen yet
        assert settled(voted, "t", 0, 0)  # nothing left to come
    one = vote(_records([(1, 0.0)] * 6))
    assert not settled(one, "t", 0, 1)  # a single candidate: a new grid could take the 2nd attempt
    assert settled(one, "t", 0, 50, margin=6) and not settled(one, "t", 0, 50, margin=7)
    # empty (0x0) predictions are never attempts, so they do not count as the 3rd
    voted = vote(_records([(1, 0.0)] * 5 + [(2, 0.0)] * 4 + [(-1, 0.0)] * 3))
    assert settled(voted, "t", 0, 3)
    assert not settled(vote(_records([(1, 0.0)] * 5 + [(2, 0.0)] * 4 + [(3, 0.0)] * 3)), "t", 0, 1)


def test_settled_q_weighted_compares_sums_of_sigmoid_q() -> None:
    recs = [(1, 5.0)] * 3 + [(2, 5.0)] * 3 + [(3, -5.0)] * 2  # sums ~2.98, ~2.98, ~0.013
    voted = vote(_records(recs), "q-weighted")
    assert settled(voted, "t", 0, 2) and not settled(voted, "t", 0, 3)
    assert not settled(vote(_records(recs), "reference"), "t", 0, 2)  # by counts: 3 > 2 + 2 is false


class SplitOracle(torch.nn.Module):
    """Answers the label for task `sure` (every view agrees) and, for the others, the label with its
    first cell's colour taken from the view's identifier (every view a different grid)."""

    def __init__(self, cfg: TRMConfig, sure: str, variants: Variants) -> None:
        super().__init__()
        self.config = cfg
        t = list(variants.tasks).index(sure)
        self.sure_ids = range(int(variants.offsets[t]) + 1, int(variants.offsets[t + 1]) + 1)
        self.rows: list[int] = []

    def initial_carry(self, batch):
        B = batch["inputs"].shape[0]
        return Carry(torch.zeros(B), torch.zeros(B), torch.zeros(B, dtype=torch.int32), torch.ones(B, dtype=torch.bool))

    def forward(self, carry, batch):
        labels = batch["labels"].long().clamp_min(0).clone()
        ids = batch["puzzle_identifiers"].long()
        unsure = torch.tensor([int(i) not in self.sure_ids for i in ids])
        labels[unsure, 0] = COLOR_OFFSET + ids[unsure] % 10
        self.rows.append(int(ids.shape[0]))
        logits = torch.nn.functional.one_hot(labels, self.config.vocab_size).float()
        q = torch.zeros(labels.shape[0])
        return carry, {"logits": logits, "q_halt_logits": q, "q_continue_logits": q}


def test_a_settled_input_stops_receiving_views_and_an_unsettled_one_gets_them_all() -> None:
    tasks = _tasks()
    variants = Variants(tasks, 15, seed=1)
    sure = next(t.id for t in tasks.tasks.values() if len(t.test_inputs) == 1 and variants.count(t.id) >= 16)
    model = SplitOracle(TRMConfig.from_name("tiny", canvas=CANVAS), sure, variants)
    status: dict = {}
    calls: list[tuple[int, int]] = []
    preds = predict(model, variants, PredictConfig(num_views=16, batch_size=64, round_views=4, settle_margin=4),
                    status=status, on_batch=lambda p, done, total: calls.append((done, total)))
    voted = vote(preds)
    assert voted.views(sure, 0) == 4  # 4 agreeing views settle it after the first round
    others = [(t.id, i) for t in tasks.tasks.values() if t.id != sure for i in range(len(t.test_inputs))]
    for task_id, i in others:  # every view a new grid: never settled, all views given
        assert voted.views(task_id, i) == min(16, variants.count(task_id))
    assert status["views"] == len(preds) < status["views_full"]
    assert calls[-1][0] == calls[-1][1]  # the last call says the run is complete
    assert all(done <= total for done, total in calls)


def test_adaptive_with_one_round_of_all_views_matches_the_fixed_count() -> None:
    tasks = _tasks()
    variants = Variants(tasks, 7, seed=2)
    model = SplitOracle(TRMConfig.from_name("tiny", canvas=CANVAS), next(iter(tasks.tasks)), variants)
    fixed = predict(model, variants, PredictConfig(num_views=8, batch_size=6))
    rounds = predict(model, variants, PredictConfig(num_views=8, batch_size=6, round_views=8, settle_margin=1))
    _same(rounds, fixed)


def test_adaptive_shards_own_whole_test_inputs() -> None:
    tasks = _tasks()
    variants = Variants(tasks, 7, seed=2)
    model = SplitOracle(TRMConfig.from_name("tiny", canvas=CANVAS), next(iter(tasks.tasks)), variants)
    cfg = PredictConfig(num_views=8, batch_size=6, round_views=3, settle_margin=3)
    parts = [predict(model, variants, cfg, shard=(r, 2)) for r in range(2)]
    keys = [{(p.task_ids[t], int(i)) for t, i in zip(p.task, p.test_index)} for p in parts]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    whole = predict(model, variants, cfg)
    merged = vote(Predictions.merge(parts))
    assert {k: merged.views(*k) for k in merged.pairs} == {k: vote(whole).views(*k) for k in vote(whole).pairs}


def test_config_names_bad_switches() -> None:
    with pytest.raises(ValueError, match="exit_rule"):
        PredictConfig(exit_rule="early")
    with pytest.raises(ValueError, match="round_views"):
        PredictConfig(round_views=-1)
    with pytest.raises(ValueError, match="stable_steps"):
        PredictConfig(stable_steps=0)


def test_cli_predict_takes_the_switches_and_says_what_it_spent(tmp_path: Path) -> None:
    model = TRM(TRMConfig.from_name("tiny", canvas=CANVAS, num_puzzle_identifiers=5),
                generator=torch.Generator().manual_seed(0))
    checkpoint.save(checkpoint.slim(checkpoint.from_model(model, {"weights": "raw"})), tmp_path / "kit")
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path / "kit"), "--data", str(CHALLENGES),
                                       "--views", "4", "--batch-size", "8", "--exit", "stable", "--stable-steps", "1",
                                       "--round-views", "2", "--settle-margin", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ACT steps" in result.output and "views" in result.output
    assert json.loads(out.read_text())


# ---- the runner: options -> prediction job -> PredictConfig; the plan's expected views ---------


def test_runner_options_carry_the_switches_into_prediction_jobs(tmp_path: Path) -> None:
    from submission.jobs import PredictJob, job_from_json
    from submission.options import OptionsError, RunnerOptions

    base = {"input_dir": tmp_path, "working_dir": tmp_path / "w"}
    assert RunnerOptions(**base).settle() == {}  # every switch off: the job asks for today's prediction
    opts = RunnerOptions(**base, exit_rule="q-halt", round_views=16, settle_margin=8)
    assert opts.settle() == {"exit_rule": "q-halt", "stable_steps": 2, "round_views": 16, "settle_margin": 8}
    job = PredictJob(name="p", phase="predict", job_dir=str(tmp_path), challenges="c.json", task_ids=["t"], canvas=12,
                     checkpoint="c", device="cpu", shards=[[0, 1]], views=64, predict_batch=8, deadline=1.0,
                     prefix="x", settle=opts.settle())
    again = job_from_json(json.loads(json.dumps(job.to_json())))
    assert again.settle == opts.settle()
    assert PredictConfig(num_views=64, **again.settle).round_views == 16
    with pytest.raises(OptionsError, match="--exit"):
        RunnerOptions(**base, exit_rule="sometimes")


def test_the_plan_counts_the_expected_views_when_adaptive() -> None:
    from submission.scheduler import Budget, Calibration, Workload, phase_costs

    cal = Calibration(device="test", train_batch=32, train_step_s=1.0, train_warmup_s=3.0, predict_batch=64,
                      predict_batch_s=2.0, predict_warmup_s=3.0, launch_s=5.0, save_s=1.0)
    work = Workload(tasks=8, test_inputs=64, train_pairs=31, world=1)
    common = dict(views_min=8, views_target=32, views_max=64, train_batch=32, predict_batch=64, write_s=0.5)
    full = phase_costs(Budget(**common), work, cal, 10, 64)
    half = phase_costs(Budget(**common, views_spent=0.5), work, cal, 10, 64)
    assert full["predict"] == 64 * 2.0 and half["predict"] == 32 * 2.0
    with pytest.raises(ValueError, match="views_spent"):
        Budget(**common, views_spent=0.0)

