"""A checkpoint agrees with itself or is refused: manifest, saved config (safetensors metadata),
tensor names, shapes, dtypes and values; the ship check, the runner's canvas and a resumed
train_state.pt end in one named error, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bundle import BundleError
from bundle.checkpoint_source import check_shippable
from submission.run import manifest_canvas
from trm_core import checkpoint
from trm_core.checkpoint import CheckpointError
from trm_cli import main
from trm_core.model import TRM, TRMConfig
from trm_core.config import TrainConfig
from trm_core.train import STATE_FILE, ResumeError, read_train_state, train

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pretrained" / "demo"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(kit: Path, change) -> None:
    m = json.loads((kit / "manifest.json").read_text())
    change(m)
    (kit / "manifest.json").write_text(json.dumps(m))


def _rewrite_weights(kit: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    """Replace the weights (any dtype, any metadata) and re-record their sha256, as a careful forger would."""
    save_file(state, str(kit / "model.safetensors"), metadata=metadata)
    _edit_manifest(kit, lambda m: m.update(weights_sha256=checkpoint.sha256_file(kit / "model.safetensors")))


def _saved_config(kit: Path) -> dict[str, str]:
    with safe_open(str(kit / "model.safetensors"), framework="pt") as f:
        return dict(f.metadata() or {})


# ---- the demo and the example of docs/checkpoints.md -------------------------------------------


def test_the_demo_carries_its_config_and_the_same_weights() -> None:
    meta = _saved_config(DEMO)
    manifest = json.loads((DEMO / "manifest.json").read_text())
    assert json.loads(meta[checkpoint.CONFIG_META_KEY]) == manifest["config"]
    ckpt = checkpoint.load(DEMO)
    assert all(v.dtype == torch.float32 for v in ckpt.state.values())
    assert check_shippable(DEMO).startswith("hidden 64, canvas 12")


@pytest.mark.parametrize("field,value", [("num_heads", 8), ("H_cycles", 3), ("puzzle_emb_len", 4),
                                         ("L_cycles", 3), ("halt_max_steps", 8), ("rope_theta", 500.0),
                                         ("forward_dtype", "bfloat16"), ("expansion", 4.1)])
def test_an_edited_demo_manifest_is_refused_by_load_and_ship(tmp_path: Path, field: str, value) -> None:
    # none of these changes a tensor shape (expansion 4.1 rounds to the same MLP width): only the
    # config saved in the weights can tell
    kit = _copy(DEMO, tmp_path / "demo")
    _edit_manifest(kit, lambda m: m["config"].update({field: value}))
    with pytest.raises(CheckpointError, match=f"{field} is .* in the weights but {value!r} in the manifest"):
        checkpoint.load(kit)
    with pytest.raises(BundleError, match=f"does not load: .*{field} is"):
        check_shippable(kit)


def test_a_kit_checkpoint_without_saved_config_is_refused_and_convert_fixes_it(tmp_path: Path) -> None:
    kit = _copy(DEMO, tmp_path / "old")
    _rewrite_weights(kit, load_file(kit / "model.safetensors"), metadata=None)
    with pytest.raises(CheckpointError, match=r"no 'trm_config' metadata.*trm convert .*old --out"):
        checkpoint.load(kit)
    res = CliRunner().invoke(main, ["convert", str(kit), "--out", str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    assert "carry no saved config" in res.output and "taken from its manifest.json" in res.output
    new = checkpoint.load(tmp_path / "new")
    assert new.manifest["provenance"]["config_metadata"].startswith("taken from manifest.json")
    old = load_file(kit / "model.safetensors")
    assert all(torch.equal(new.state[k], old[k]) for k in old) and set(new.state) == set(old)


# ---- unknown fields, types, huge values ------------------------------------------------------------


def test_a_typo_in_the_manifest_config_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    kit = _copy(DEMO, tmp_path / "demo")
    _edit_manifest(kit, lambda m: m["config"].update(H_cylces=3))
    with pytest.raises(CheckpointError, match=r"unknown field 'H_cylces' \(did you mean 'H_cycles'\?\)"):
        checkpoint.load(kit)
    with pytest.raises(BundleError, match="H_cylces"):
        check_shippable(kit)


def test_an_unknown_field_in_the_saved_config_is_refused(tmp_path: Path) -> None:
    kit = _copy(DEMO, tmp_path / "demo")
    cfg = json.loads((kit / "manifest.json").read_text())["config"]
    _rewrite_weights(kit, load_file(kit / "model.safetensors"),
                     {checkpoint.CONFIG_META_KEY: json.dumps({**cfg, "mlp_t": True})})
    with pytest.raises(CheckpointError, match=r"trm_config metadata has an unknown field 'mlp_t'"):
        checkpoint.load(kit)


@pytest.mark.parametrize("field,text,match", [
    ("expansion", "1e400", "expansion must be a finite number"),
    ("hidden_size", "1000000000000000000000000000000", r"hidden_size=1000000000000000000000000000000 is outside"),
    ("H_cycles", "100000000", "H_cycles=100000000 is outside 0..64"),
    ("num_heads", "true", "num_heads must be an integer, got True"),
    ("hidden_size", '"64"', "hidden_size must be an integer, got '64'"),
    ("canvas", "12.0", "canvas must be an integer, got 12.0"),
    ("rms_norm_eps", "NaN", "rms_norm_eps must be a finite number"),
    ("forward_dtype", "[1]", "forward_dtype must be a string"),
])
def test_a_config_value_of_the_wrong_kind_is_named(tmp_path: Path, field: str, text: str, match: str) -> None:
    kit = _copy(DEMO, tmp_path / "demo")
    raw = (kit / "manifest.json").read_text()
    m = json.loads(raw)
    m["config"][field] = "@@"
    (kit / "manifest.json").write_text(json.dumps(m).replace('"@@"', text))
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(kit)


# ---- tensors: what they show, dtypes, values ------------------------------------------------------


def _tiny_kit(tmp_path: Path, **changes) -> Path:
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, puzzle_emb_ndim=16, **changes)
    return checkpoint.save(checkpoint.slim(checkpoint.from_model(TRM(cfg, generator=torch.Generator().manual_seed(0)))),
                           tmp_path / "kit")


def _forge(kit: Path, state: dict[str, torch.Tensor], **config) -> None:
    """Weights and manifest rewritten together, the saved config agreeing: only the tensors can object."""
    m = json.loads((kit / "manifest.json").read_text())
    m["config"].update(config)
    (kit / "manifest.json").write_text(json.dumps(m))
    _rewrite_weights(kit, state, {checkpoint.CONFIG_META_KEY: json.dumps(m["config"])})


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 32, r"embed_tokens.embedding_weight has shape \[12, 16\] but the config implies hidden_size=32"),
    ("vocab_size", 14, "config implies vocab_size=14; the weights say vocab_size=12"),
    ("L_layers", 3, "2 blocks under L_level.layers but the config implies L_layers=3"),
    ("expansion", 30.0, r"implies \[1024, 16\] \(expansion=30.0 gives an MLP width of 512, the weights' is 256\)"),
    ("puzzle_emb_ndim", 8, "puzzle_emb.mean has shape \\[16\\] but the config implies puzzle_emb_ndim=8"),
])
def test_fields_the_tensors_show_are_named(tmp_path: Path, field: str, value, match: str) -> None:
    kit = _tiny_kit(tmp_path)
    changes = {field: value}
    if field == "hidden_size":
        changes["puzzle_emb_ndim"] = 32
    _forge(kit, load_file(kit / "model.safetensors"), **changes)
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(kit)


def test_a_q_head_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    kit = _tiny_kit(tmp_path)
    state = load_file(kit / "model.safetensors")
    state["q_head.weight"], state["q_head.bias"] = torch.zeros(3, 16), torch.zeros(3)
    _forge(kit, state)
    with pytest.raises(CheckpointError, match=r"q_head.weight has shape \[3, 16\]; a q-head is \[2, hidden_size\]"):
        checkpoint.load(kit)


def test_learned_positions_show_canvas_and_puzzle_emb_len(tmp_path: Path) -> None:
    kit = _tiny_kit(tmp_path, pos_encodings="learned")
    _forge(kit, load_file(kit / "model.safetensors"), puzzle_emb_len=3)
    with pytest.raises(CheckpointError, match=r"embed_pos.embedding_weight has 145 rows .* 12\*\*2 \+ 3 = 147"):
        checkpoint.load(kit)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_a_kit_tensor_that_is_not_float32_is_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    kit = _tiny_kit(tmp_path)
    state = load_file(kit / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"].to(dtype)
    _forge(kit, state)
    with pytest.raises(CheckpointError, match=rf"lm_head.weight is {str(dtype)[6:]}; .* float32 tensors only"):
        checkpoint.load(kit)


@pytest.mark.parametrize("key,bad", [("L_level.layers.1.mlp.down_proj.weight", float("nan")),
                                     ("puzzle_emb.std", float("inf")), ("H_init", float("-inf"))])
def test_a_non_finite_value_in_any_tensor_is_named(tmp_path: Path, key: str, bad: float) -> None:
    kit = _tiny_kit(tmp_path)
    state = load_file(kit / "model.safetensors")
    state[key].view(-1)[-1] = bad
    _forge(kit, state)
    with pytest.raises(CheckpointError, match=rf"{key} holds NaN or Inf values"):
        checkpoint.load(kit)
    with pytest.raises(BundleError, match=rf"does not load: .*{key} holds NaN"):
        check_shippable(kit)


def test_a_half_precision_reference_converts_exactly_to_float32(tmp_path: Path) -> None:
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, puzzle_emb_ndim=16, num_puzzle_identifiers=5)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    state = {f"_orig_mod.model.inner.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "step_1")
    out = checkpoint.convert(tmp_path / "step_1", cfg, tmp_path / "kit", slim_table=False)
    kit = checkpoint.load(out)
    for k, v in state.items():
        got = kit.state[k.removeprefix("_orig_mod.model.inner.")]
        assert got.dtype == torch.float32 and torch.equal(got, v.float()), k


def test_a_reference_with_nan_or_integer_weights_is_refused(tmp_path: Path) -> None:
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, puzzle_emb_ndim=16)
    state = {f"model.inner.{k}": v for k, v in TRM(cfg).state_dict().items()}
    state["model.inner.lm_head.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "step_1")
    with pytest.raises(CheckpointError, match="lm_head.weight holds NaN or Inf"):
        checkpoint.load(tmp_path / "step_1", cfg)
    state["model.inner.lm_head.weight"] = torch.zeros(12, 16, dtype=torch.int64)
    torch.save(state, tmp_path / "step_1")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "step_1"), "--config", "tiny", "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "lm_head.weight is int64" in res.output or "hidden_size" in res.output


# ---- the ship check ---------------------------------------------------------------------------------


def test_a_canvas_above_30_is_refused_at_ship_time(tmp_path: Path) -> None:
    kit = _tiny_kit(tmp_path, canvas=31)
    checkpoint.load(kit)  # a valid checkpoint ...
    with pytest.raises(BundleError, match="canvas 31 is larger than ARC's 30x30 grids"):
        check_shippable(kit)  # ... that the notebook could not predict with


def test_a_q_head_that_overflows_is_refused_at_ship_time(tmp_path: Path) -> None:
    kit = _tiny_kit(tmp_path)
    state = load_file(kit / "model.safetensors")
    state["q_head.weight"] = torch.full((2, 16), 3e38)  # finite weights, an infinite q_halt
    _forge(kit, state)
    checkpoint.load(kit)
    with pytest.raises(BundleError, match=r"q_halt_logits of shape \[1\] with non-finite values"):
        check_shippable(kit)


# ---- the runner's canvas ------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest,match", [
    ({"config": {"canvas": float("inf")}}, "must be an integer 1..30, got inf"),
    ({"config": {"canvas": 40}}, "canvas 40 is outside 1..30"),
    ({"config": {"canvas": 0}}, "canvas 0 is outside"),
    ({"config": {"canvas": True}}, "got True"),
    ({"config": {"canvas": "12"}}, "got '12'"),
    ({"config": {}}, "got None"),
    ({"config": [12]}, "got None"),
    ([], "got None"),
])
def test_the_runner_reads_only_a_canvas_it_can_predict_with(manifest, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        manifest_canvas(manifest, "ckpt/manifest.json")
    assert manifest_canvas({"config": {"canvas": 30}}, "m") == 30


def test_a_canvas_of_1e400_leaves_the_fallback_with_a_named_problem(tmp_path: Path, micro_checkpoint: Path) -> None:
    from test_runner_hygiene import CHALLENGES, _input, _run
    from test_runner import _options

    ckpt = _copy(micro_checkpoint, tmp_path / "ckpt")
    text = (ckpt / "manifest.json").read_text()
    m = json.loads(text)
    m["config"]["canvas"] = "@@"
    (ckpt / "manifest.json").write_text(json.dumps(m).replace('"@@"', "1e400"))
    sub, record = _run(_options(tmp_path, _input(tmp_path), ckpt, 20.0))
    assert any("config.canvas must be an integer 1..30, got inf" in p and "fallback stays" in p
               for p in record["problems"]), record["problems"]
    assert "train" not in [p["name"] for p in record["phases"]]
    assert sub["0d3d703e"][0]["attempt_1"] == CHALLENGES["0d3d703e"]["test"][0]["input"]


# ---- resuming train_state.pt ----------------------------------------------------------------------------


class _Payload:
    marker = ""

    def __reduce__(self):
        return (Path(self.marker).write_text, ("executed",))


def _damaged_states(tmp_path: Path) -> dict[str, tuple[bytes | None, str]]:
    good = tmp_path / "good.pt"
    torch.save({"step": 1}, good)
    data = good.read_bytes()
    _Payload.marker = str(tmp_path / "marker")
    pickled = tmp_path / "pickled.pt"
    torch.save({"step": 1, "model": _Payload()}, pickled)
    return {"empty": (b"", "damaged or not a torch file"),
            "text": (b"not a torch file", "damaged or not a torch file"),
            "truncated": (data[: len(data) // 2], "damaged or not a torch file"),
            "pickle": (pickled.read_bytes(), "needs code to load and was refused"),
            "wrong layout": (data, "not a trm-kit training state")}


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "pickle", "wrong layout"])
def test_a_damaged_train_state_is_a_named_error(tmp_path: Path, case: str) -> None:
    content, match = _damaged_states(tmp_path)[case]
    path = tmp_path / STATE_FILE
    path.write_bytes(content)
    with pytest.raises(ResumeError, match=rf"{STATE_FILE} .*{match}.*delete it"):
        read_train_state(path)
    assert not (tmp_path / "marker").exists()  # refused, never executed


def test_resume_from_a_damaged_state_stops_before_training(tmp_path: Path) -> None:
    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, puzzle_emb_ndim=16, num_puzzle_identifiers=2)
    (tmp_path / STATE_FILE).write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ResumeError, match="delete it"):
        train(TRM(cfg), iter(()), TrainConfig(steps=1, global_batch_size=2), out_dir=tmp_path, log=lambda s: None)
    # a state saved by another model (its model tensors do not fit) is named too
    other = TRM(cfg.with_(hidden_size=32, puzzle_emb_ndim=32)).state_dict()
    torch.save({"step": 1, "train_config": {"global_batch_size": 2}, "world_size": 1, "model": other, "adam": None,
                "sign": None, "ema": None, "sampler": None, "generators": []}, tmp_path / STATE_FILE)
    with pytest.raises(ResumeError, match="saved by a different model"):
        train(TRM(cfg), iter(()), TrainConfig(steps=1, global_batch_size=2), out_dir=tmp_path, log=lambda s: None)


@pytest.mark.parametrize("text,match", [("[" * 5000 + "]" * 5000, "nested more than 64 levels"),
                                        ("[1, 2]", "expected a JSON object, got list")])
def test_a_hostile_manifest_is_named_when_resolving_what_to_ship(tmp_path: Path, text: str, match: str) -> None:
    from bundle.checkpoint_source import resolve_checkpoint

    kit = _copy(DEMO, tmp_path / "demo")
    (kit / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=match):
        resolve_checkpoint(str(kit), tmp_path / "cache", registry={})
