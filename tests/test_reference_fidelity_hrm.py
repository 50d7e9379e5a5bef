"""The HRM against the reference's golden outputs, for every fixture under model/.

Each sub-folder of `$TRM_REFERENCE_FIXTURES_HRM/model/` (default ../shared/fixtures/reference-hrm)
holds `config.json` (the reference HRM's arch fields), a reference `step_*` checkpoint,
`tensors.safetensors` (batch, the first L and H module calls, per-step eval outputs and carries,
one train step with its Q target and gradients) and `tolerances.json`. The checkpoint goes
through the kit's own loader; every recorded tensor is compared with the same rules as the TRM
fixtures, and a recorded tensor the kit does not produce fails the test.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from test_reference_fidelity import SLOW_FLOPS, _compare, _load_model, _outputs

from conftest import REPO_ROOT
from trm_core.loss import act_loss
from trm_core.model import TRMConfig, flops_per_sample


def hrm_reference_root() -> Path:
    """The HRM fixture root: $TRM_REFERENCE_FIXTURES_HRM or ../shared/fixtures/reference-hrm."""
    env = os.environ.get("TRM_REFERENCE_FIXTURES_HRM")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "fixtures" / "reference-hrm").resolve()


def _model_dirs() -> list[Path]:
    base = hrm_reference_root() / "model"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


MODEL_DIRS = _model_dirs()


def _params(folder: Path):
    raw = json.loads((folder / "config.json").read_text())
    cfg = TRMConfig.from_dict(raw)
    cost = flops_per_sample(cfg, train=True) * raw.get("batch_size", 1) * (cfg.halt_max_steps + 1)
    marks = [pytest.mark.slow] if cost > SLOW_FLOPS else []
    return pytest.param(folder, id=folder.name, marks=marks)


PARAMS = [_params(f) for f in MODEL_DIRS]


def _with_sums(prefix: str, got: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Where the reference stores only per-position sums of the carry, compare those.
    got[f"{prefix}z_H_sum"] = got[f"{prefix}z_H"].double().sum(-1)
    got[f"{prefix}z_L_sum"] = got[f"{prefix}z_L"].double().sum(-1)
    return got


def _fixture_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "tensors.safetensors")


@functools.lru_cache(maxsize=None)
def _run_eval(folder: Path) -> dict[str, torch.Tensor]:
    tensors = _fixture_tensors(folder)
    model = _load_model(folder).eval()
    assert model.config.architecture == "hrm", f"{folder}: config.json did not load as an HRM"
    batch = {k[len("batch."):]: v for k, v in tensors.items() if k.startswith("batch.")}
    n_steps = len({k.split(".")[1] for k in tensors if k.startswith("eval.step")})
    got: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        x = model.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        got["debug.input_embeddings"] = x
        cos, sin = model.rope()
        z_H, z_L = model.H_init.expand_as(x), model.L_init.expand_as(x)
        for i in range(model.config.L_cycles):
            z_L = model.L_level(z_L, z_H + x, cos, sin)
            if i == 0:
                got["debug.L_level_call0"] = z_L
        got["debug.H_level_call0"] = model.H_level(z_H, z_L, cos, sin)
        carry = model.initial_carry(batch)
        for step in range(n_steps):
            carry, out = model(carry, batch)
            loss, metrics, preds = act_loss(carry, out)
            got.update(_with_sums(f"eval.step{step}.", _outputs(f"eval.step{step}.", carry, out, loss, metrics, preds)))
    return {k: v.detach().clone() for k, v in got.items()}


@functools.lru_cache(maxsize=None)
def _run_train(folder: Path) -> dict[str, torch.Tensor]:
    tensors = _fixture_tensors(folder)
    model = _load_model(folder).train()
    batch = {k[len("batch."):]: v for k, v in tensors.items() if k.startswith("batch.")}
    B = batch["inputs"].shape[0]
    carry = model.initial_carry(batch)
    carry, out = model(carry, batch)
    assert "target_q_continue" in out, "an HRM in training must produce the bootstrapped Q target"
    loss, metrics, preds = act_loss(carry, out)
    (loss / B).backward()
    got = _with_sums("train.", _outputs("train.", carry, out, loss, metrics, preds))
    got["train.target_q_continue"] = out["target_q_continue"]
    for k in ("lm_loss", "q_halt_loss", "q_continue_loss"):
        got[f"train.{k}"] = metrics[k]
    got["train.local_ids"] = model.puzzle_emb.local_ids
    grads = {name: p.grad for name, p in model.named_parameters()}
    grads["puzzle_emb.local_weights"] = model.puzzle_emb.local_weights.grad
    for name, g in grads.items():
        assert g is not None, f"no gradient reached {name}"
        got[f"train.grad.{name}"] = g
        got[f"train.grad_norm.{name}"] = g.double().norm()
    return {k: v.detach().clone() for k, v in got.items()}


@pytest.mark.skipif(not MODEL_DIRS, reason="no HRM model fixtures found")
@pytest.mark.parametrize("folder", PARAMS)
def test_hrm_eval_steps_match_reference(folder: Path) -> None:
    got = _run_eval(folder)
    _compare(folder, "debug.", got)
    _compare(folder, "eval.", got)


@pytest.mark.skipif(not MODEL_DIRS, reason="no HRM model fixtures found")
@pytest.mark.parametrize("folder", PARAMS)
def test_hrm_train_step_matches_reference(folder: Path) -> None:
    _compare(folder, "train.", _run_train(folder))


def test_hrm_fixture_folders_are_discovered() -> None:
    # Guards against a silently empty parametrisation when the fixture root is misconfigured.
    assert MODEL_DIRS, ("no sub-folders under model/ in the HRM reference fixtures "
                        f"({hrm_reference_root()}; set TRM_REFERENCE_FIXTURES_HRM)")
    for folder in MODEL_DIRS:
        assert (folder / "config.json").is_file() and (folder / "tensors.safetensors").is_file()
