"""HRM, the second architecture: its config rules, the released layouts (the reference repository's
`step_N` and sapientinc's `checkpoint` + all_config.yaml) loading and converting, learned
positions, the FLOP model against what runs, and a tiny HRM going the whole way: pre-training
that learns, the four post-training modes, prediction from the command line and the dry run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_reference_fidelity_hrm import MODEL_DIRS as HRM_DIRS
from test_train import CANVAS, QUIET, _exact_on_train_pairs, synthetic_tasks

from conftest import reference_subdirs
from trm_core import checkpoint
from trm_core.checkpoint import CheckpointError
from trm_cli import main
from trm_core.batches import TrainSampler
from trm_core.variants import Variants
from trm_core.loss import act_loss
from trm_core.model import TRM, TRMConfig, count_parameters, flops_per_sample
from trm_core.hub import load_registry
from trm_core.submission_file import validate
from trm_core.config import TrainConfig
from trm_core.train import train

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder"
CHALLENGES = PLACEHOLDER / "arc-agi_test_challenges.json"
SOLUTIONS = PLACEHOLDER / "arc-agi_test_solutions.json"

# sapientinc/HRM's all_config.yaml as its pretrain.py writes it (yaml.dump of the run config): the
# arch section has neither forward_dtype nor mlp_t, seq_len / vocab / ids come from the data.
SAPIENTINC_YAML = """arch:
  H_cycles: 2
  H_layers: 1
  L_cycles: 2
  L_layers: 1
  expansion: 4
  halt_exploration_prob: 0.1
  halt_max_steps: 3
  hidden_size: 32
  loss:
    loss_type: stablemax_cross_entropy
    name: losses@ACTLossHead
  name: hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1
  num_heads: 2
  pos_encodings: rope
  puzzle_emb_ndim: 32
beta1: 0.9
beta2: 0.95
checkpoint_every_eval: true
data_path: data/arc-2-aug-1000
global_batch_size: 768
lr: 0.0001
project_name: Arc-2-aug-1000 ACT-torch
puzzle_emb_lr: 0.01
"""


def _tiny(**changes) -> TRMConfig:
    return TRMConfig.from_name("hrm-tiny", **changes)


def _batch(cfg: TRMConfig, B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g, dtype=torch.int32),
            "labels": torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g, dtype=torch.int32),
            "puzzle_identifiers": torch.randint(1, cfg.num_puzzle_identifiers, (B,), generator=g, dtype=torch.int32)}


def _eval_outputs(model: TRM, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.inference_mode():
        carry, out = model(model.initial_carry(batch), batch)
    return {**out, "z_H": carry.z_H, "z_L": carry.z_L}


# ---- config --------------------------------------------------------------------------------------


def test_hrm_config_rules() -> None:
    ref = {"name": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1", "hidden_size": 64, "num_heads": 4,
           "H_cycles": 2, "L_cycles": 2, "H_layers": 2, "L_layers": 2, "puzzle_emb_ndim": 1000, "seq_len": 900,
           "expansion": 4, "halt_max_steps": 4, "mlp_t": False, "batch_size": 3}
    cfg = TRMConfig.from_dict(ref)
    assert (cfg.architecture, cfg.H_layers, cfg.puzzle_emb_len, cfg.total_len) == ("hrm", 2, 16, 916)
    assert cfg.forward_dtype == "bfloat16"  # sapientinc's default when the config omits it
    # Derived, whatever is passed: ceil(ndim / hidden).
    assert _tiny(puzzle_emb_ndim=65).puzzle_emb_len == 2 and _tiny(puzzle_emb_ndim=0).puzzle_emb_len == 0
    assert _tiny(puzzle_emb_len=7).puzzle_emb_len == 1
    assert TRMConfig.from_dict(cfg.to_dict()) == cfg  # our manifest round trip
    with pytest.raises(ValueError, match="H_layers >= 1"):
        _tiny(H_layers=0)
    with pytest.raises(ValueError, match="architecture='hrm'"):
        TRMConfig.from_name("tiny", H_layers=2)
    with pytest.raises(ValueError, match="architecture must be"):
        TRMConfig(architecture="gpt")
    # A reference TRM config keeps ignoring its unused H_layers.
    trm = TRMConfig.from_dict({"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
                               "H_layers": 4, "L_layers": 2, "puzzle_emb_len": 16})
    assert trm.architecture == "trm" and trm.H_layers == 0


def test_hrm_preset_has_the_released_layout() -> None:
    cfg = TRMConfig.from_name("hrm")
    model = TRM(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["H_init"] == (512,) and model.H_init.dtype == torch.bfloat16
    assert shapes["puzzle_emb.weights"] == (1, 512) and cfg.puzzle_emb_len == 1 and cfg.total_len == 901
    for level in ("H_level", "L_level"):
        layers = {k.split(".")[2] for k in shapes if k.startswith(f"{level}.layers.")}
        assert layers == {"0", "1", "2", "3"}
        assert shapes[f"{level}.layers.3.self_attn.qkv_proj.weight"] == (1536, 512)
        assert shapes[f"{level}.layers.3.mlp.gate_up_proj.weight"] == (3072, 512)
        assert shapes[f"{level}.layers.3.mlp.down_proj.weight"] == (512, 1536)
    assert len(shapes) == 7 + 2 * 4 * 4
    # 8 blocks of 3,407,872 + token embedding, lm head and q head: the "27M" of the HRM paper.
    assert count_parameters(model) == 8 * 3_407_872 + 6144 + 6144 + 1026


def test_registry_lists_the_hrm_release() -> None:
    entry = load_registry()["sapientinc-hrm-arc-agi-2"]
    assert entry.hub_repo == "sapientinc/HRM-checkpoint-ARC-2" and entry.filename == "checkpoint"
    assert entry.config == TRMConfig.from_name("hrm") and not entry.ema


def test_learned_positions_are_added_before_the_scale() -> None:
    cfg = _tiny(pos_encodings="learned", num_puzzle_identifiers=4)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0)).eval()
    assert model.rotary_emb is None and model.rope() == (None, None)
    assert tuple(model.state_dict()["embed_pos.embedding_weight"].shape) == (cfg.total_len, cfg.hidden_size)
    with torch.no_grad():
        model.puzzle_emb.weights.normal_(generator=torch.Generator().manual_seed(1))
    batch = _batch(cfg, 2)
    tok = model.embed_tokens.embedding_weight[batch["inputs"].long()]
    pe = model.puzzle_emb.weights[batch["puzzle_identifiers"].long()].view(2, 1, cfg.hidden_size)
    want = math.sqrt(cfg.hidden_size) * 0.707106781 * (torch.cat((pe, tok), 1) + model.embed_pos.embedding_weight)
    got = model.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    rope = TRM(_tiny(num_puzzle_identifiers=4), generator=torch.Generator().manual_seed(0)).eval()
    rope.load_state_dict({k: v for k, v in model.state_dict().items() if k != "embed_pos.embedding_weight"})
    assert not torch.allclose(_eval_outputs(model, batch)["logits"], _eval_outputs(rope, batch)["logits"])


# ---- loading and converting ----------------------------------------------------------------------


def _sapientinc_release(folder: Path, prefix: str = "_orig_mod.model.inner.") -> tuple[Path, TRM]:
    """A release laid out as sapientinc/HRM writes it: `checkpoint` beside `all_config.yaml`."""
    cfg = TRMConfig.from_dict({**_yaml_arch(), "num_puzzle_identifiers": 5})
    model = TRM(cfg, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.puzzle_emb.weights.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
        model.q_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, folder / "checkpoint")
    (folder / "all_config.yaml").write_text(SAPIENTINC_YAML)
    return folder / "checkpoint", model


def _yaml_arch() -> dict:
    from trm_core.checkpoint import _parse_simple_yaml

    return _parse_simple_yaml(SAPIENTINC_YAML)["arch"]


@pytest.mark.parametrize("prefix", ["_orig_mod.model.inner.", "model.inner."])
def test_sapientinc_release_loads_from_its_folder(tmp_path: Path, prefix: str) -> None:
    path, source = _sapientinc_release(tmp_path / "release", prefix)
    ckpt = checkpoint.load(path)  # no config: all_config.yaml beside the file
    cfg = ckpt.config
    assert (cfg.architecture, cfg.forward_dtype, cfg.canvas, cfg.puzzle_emb_len) == ("hrm", "bfloat16", 30, 1)
    assert cfg.num_puzzle_identifiers == 5 and ckpt.state["H_init"].dtype == torch.bfloat16
    model = checkpoint.build_model(ckpt)
    batch = _batch(cfg, 2)
    want, got = _eval_outputs(source, batch), _eval_outputs(model, batch)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_cli_convert_slims_an_hrm_release(tmp_path: Path) -> None:
    path, source = _sapientinc_release(tmp_path / "release")
    out = tmp_path / "kit"
    result = CliRunner().invoke(main, ["convert", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    kit = checkpoint.load(out)
    assert kit.slim and kit.config.architecture == "hrm" and kit.config.H_layers == 1
    for k, v in source.state_dict().items():
        if k != "puzzle_emb.weights":
            assert torch.equal(kit.state[k], v), k
    torch.testing.assert_close(kit.state["puzzle_emb.mean"], source.puzzle_emb.weights.mean(0))
    assert checkpoint.build_model(kit, num_puzzle_identifiers=7).H_level is not None


@pytest.mark.skipif(not HRM_DIRS, reason="no HRM model fixtures found")
@pytest.mark.parametrize("folder", HRM_DIRS, ids=[f.name for f in HRM_DIRS])
def test_reference_hrm_checkpoints_convert_to_the_trunk(tmp_path: Path, folder: Path) -> None:
    step = next(folder.glob("step_*"))
    raw = torch.load(step, map_location="cpu", weights_only=True)
    out = checkpoint.convert(step, folder / "config.json", tmp_path / "kit")
    kit = checkpoint.load(out)
    assert kit.slim and kit.config.architecture == "hrm"
    assert kit.config == TRMConfig.from_dict(json.loads((folder / "config.json").read_text())).with_(
        num_puzzle_identifiers=1)
    trunk = {k.removeprefix("_orig_mod.model.inner."): v for k, v in raw.items()}
    assert set(kit.state) == set(trunk) - {"puzzle_emb.weights"} | {"puzzle_emb.mean", "puzzle_emb.std"}
    for k in set(trunk) & set(kit.state):
        assert torch.equal(kit.state[k], trunk[k]), k


def test_architecture_mismatch_is_named(tmp_path: Path) -> None:
    path, _ = _sapientinc_release(tmp_path / "release")
    with pytest.raises(CheckpointError, match="holds an HRM.*preset 'hrm'"):
        checkpoint.load(path, TRMConfig.from_name("tiny", hidden_size=32, num_heads=2, puzzle_emb_ndim=32))
    trm_dirs = reference_subdirs("model")
    if trm_dirs:
        folder = trm_dirs[0]
        with pytest.raises(CheckpointError, match="holds a TRM"):
            checkpoint.load(next(folder.glob("step_*")), "hrm")


# ---- the FLOP model against what runs --------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "hrm-tiny"])
def test_flops_per_sample_counts_what_runs(preset: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = TRMConfig.from_name(preset, canvas=6, num_puzzle_identifiers=4, halt_exploration_prob=0.0)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    B = 3
    batch = _batch(cfg, B)
    model.eval()
    # The counter sees attention as the math kernel's matmuls (it has no formula for CPU flash attention).
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(model.initial_carry(batch), batch)
    assert fc.get_total_flops() == pytest.approx(B * flops_per_sample(cfg, train=False), rel=0.01)
    model.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        carry, out = model(model.initial_carry(batch), batch)
        act_loss(carry, out)[0].backward()
    assert fc.get_total_flops() == pytest.approx(B * flops_per_sample(cfg, train=True), rel=0.01)


# ---- a tiny HRM the whole way ------------------------------------------------------------------------


@pytest.mark.slow  # 400 steps: about a minute on 2 idle cores; the command-line test below pre-trains by default
def test_tiny_hrm_learns_small_tasks_to_full_training_accuracy() -> None:
    variants = Variants(synthetic_tasks(), 0, seed=0)
    cfg = _tiny(canvas=CANVAS, num_puzzle_identifiers=variants.num_identifiers, halt_max_steps=1)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    assert _exact_on_train_pairs(model, variants)[0] == 0
    tc = TrainConfig(steps=400, global_batch_size=12, lr=2e-3, lr_min_ratio=0.0, warmup_steps=20,
                     weight_decay=0.0, ema=False, log_every=100)
    train(model, TrainSampler(variants, 12, seed=0, canvas=CANVAS, translate=False), tc, **QUIET)
    assert _exact_on_train_pairs(model, variants) == (12, 12)


def test_train_step_with_act_continue_halts_and_learns_its_q_target() -> None:
    cfg = _tiny(canvas=CANVAS, num_puzzle_identifiers=4, halt_exploration_prob=0.0)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0)).train()
    with torch.no_grad():
        model.q_head.bias.copy_(torch.tensor([0.5, -0.5]))  # halting looks better: every row halts
    batch = _batch(cfg, 4)
    carry, out = model(model.initial_carry(batch), batch)
    assert carry.halted.all() and (carry.steps == 1).all()
    loss, metrics, _ = act_loss(carry, out)
    target = out["target_q_continue"]
    assert target.shape == (4,) and ((0 < target) & (target < 1)).all() and not target.requires_grad
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["q_continue_logits"], target, reduction="sum")
    torch.testing.assert_close(metrics["q_continue_loss"], bce.detach())
    torch.testing.assert_close(loss, metrics["lm_loss"] + 0.5 * (metrics["q_halt_loss"] + bce.detach()).double())
    loss.backward()
    assert float(model.q_head.weight.grad[1].abs().sum()) > 0  # the q_continue row learns
    assert model.puzzle_emb.local_weights.grad is not None  # the target forward left the leaf alone
    model.eval()
    carry, out = model(model.initial_carry(batch), batch)
    assert "target_q_continue" not in out and not carry.halted.any()  # eval ignores the q head


def test_cli_tiny_hrm_pretrains_post_trains_in_every_mode_and_predicts(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--data", str(CHALLENGES), "--solutions", str(SOLUTIONS), "--batch-size", "8", "--warmup", "1",
              "--variants", "2", "--log-every", "2", "--device", "cpu"]
    result = runner.invoke(main, ["pretrain", "--preset", "hrm-tiny", "--steps", "3", "--out", str(tmp_path / "pre"),
                                  "--export", str(tmp_path / "slim"), *common])
    assert result.exit_code == 0, result.output
    logged = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(m["q_continue_loss"] > 0 for m in logged)  # the HRM's Q-target term is trained
    slim = checkpoint.load(tmp_path / "slim")
    assert slim.slim and slim.config.architecture == "hrm" and any(k.startswith("H_level.") for k in slim.state)
    for mode in ("full", "embeddings", "embeddings-then-full", "lora"):
        result = runner.invoke(main, ["posttrain", "--checkpoint", str(tmp_path / "slim"), "--mode", mode,
                                      "--steps", "2", "--out", str(tmp_path / mode), *common])
        assert result.exit_code == 0, f"{mode}: {result.output}"
        post = checkpoint.load(tmp_path / mode / "checkpoint")
        assert post.config.architecture == "hrm" and post.manifest["train"]["mode"] == mode
        trunk = [k for k in slim.state if k.startswith(("H_level.", "L_level."))]
        moved = {k for k in trunk if not torch.equal(post.state[k], slim.state[k])}
        assert moved == (set() if mode == "embeddings" else set(trunk)), mode  # lora folds into every linear
    sub = tmp_path / "s.json"
    result = runner.invoke(main, ["predict", "--checkpoint", str(tmp_path / "lora" / "checkpoint"), "--data",
                                  str(CHALLENGES), "--views", "2", "--halt-steps", "1", "--out", str(sub)])
    assert result.exit_code == 0, result.output
    assert "adapted checkpoint" in result.output
    assert validate(json.loads(sub.read_text()), json.loads(CHALLENGES.read_text())) == []


@pytest.fixture(scope="module")
def micro_hrm_checkpoint(tmp_path_factory) -> Path:
    cfg = _tiny(hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=2, puzzle_emb_ndim=16,
                num_puzzle_identifiers=3)
    out = tmp_path_factory.mktemp("ckpt") / "micro-hrm"
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    checkpoint.save(checkpoint.slim(checkpoint.from_model(model)), out)
    return out


def test_dry_run_takes_an_hrm_checkpoint(tmp_path: Path, micro_hrm_checkpoint: Path) -> None:
    from bundle.dry_run import DryRunOptions, dry_run

    # the same generous budget and step cap as the TRM dry-run test
    opts = DryRunOptions(checkpoint=micro_hrm_checkpoint, budget_s=120.0, out=tmp_path / "out", cpu_procs=2,
                         train_batch=8, predict_batch=16, views=(2, 4, 8), extra_args=("--max-steps", "30"))
    res = dry_run(opts, echo=lambda line: None)
    sub = json.loads((res.out / "submission.json").read_text())
    assert res.valid and validate(sub, json.loads(CHALLENGES.read_text())) == []
    run = json.loads((res.out / "run.json").read_text())
    assert run["train"]["steps_done"] >= 1 and run["finished_before_deadline"]
    report = json.loads((res.out / "timing-report.json").read_text())
    models = [p["model"] for p in report["projection"]]
    assert len(models) == 2 and models[0].startswith("this checkpoint: HRM") and models[1].startswith("hrm preset")


def test_study_arms_take_an_hrm_checkpoint(tmp_path: Path, micro_hrm_checkpoint: Path) -> None:
    from test_study import two_tasks

    from trm_core.config import StudyConfig, study_train
    from trm_lab.study import run_arm
    from trm_core.tasks import TaskSet

    ckpt = checkpoint.load(micro_hrm_checkpoint)
    tasks = TaskSet({t.id: t for t in two_tasks()})
    cfg = StudyConfig(study_train(2, 4, warmup_steps=0), arms=("full", "scratch"), eval_every=2, views=2,
                      num_variants=2)
    for arm in ("full", "scratch"):
        result = run_arm(arm, ckpt, tasks, cfg, tmp_path / arm, log=lambda line: None)
        assert [r["step"] for r in result.curve] == [2] and 0.0 <= result.curve[0]["pass@2"] <= 1.0
        assert any(k.startswith("H_level.") for k in result.changed), arm  # the HRM's own stack trained
        assert not {"H_init", "L_init"} & set(result.changed)
