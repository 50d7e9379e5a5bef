"""Checkpoint reading, the kit format, slim conversion, resizing, refusals and `trm convert`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import reference_subdirs
from trm_core import checkpoint
from trm_core.checkpoint import CheckpointError
from trm_cli import main
from trm_core.model import TRM, TRMConfig

CFG = TRMConfig.from_name("tiny", puzzle_emb_len=4, num_puzzle_identifiers=500)


def _reference_file(tmp_path: Path, cfg: TRMConfig = CFG, prefix: str = "_orig_mod.model.inner.",
                    seed: int = 0) -> tuple[Path, TRM]:
    """A checkpoint in the released format: torch.save of a prefixed state dict."""
    g = torch.Generator().manual_seed(seed)
    model = TRM(cfg, generator=g)
    with torch.no_grad():
        model.puzzle_emb.weights.normal_(generator=g)
    path = tmp_path / "step_7"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    return path, model


def _batch(cfg: TRMConfig, B: int = 3, ids: list[int] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=g, dtype=torch.int32)
    pid = torch.tensor(ids or [1] * B, dtype=torch.int32)
    return {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": pid}


def _run(model: TRM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        carry = model.initial_carry(batch)
        carry, out = model(carry, batch)
    return out["logits"]


@pytest.mark.parametrize("prefix", ["_orig_mod.model.inner.", "model.inner."])
def test_reference_file_round_trips_bit_exact(tmp_path: Path, prefix: str) -> None:
    path, model = _reference_file(tmp_path, prefix=prefix)
    ckpt = checkpoint.load(path, CFG)
    assert ckpt.config.num_puzzle_identifiers == 500
    rebuilt = checkpoint.build_model(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    batch = _batch(CFG, ids=[1, 7, 499])
    assert torch.equal(_run(rebuilt, batch), _run(model, batch))


def test_full_kit_conversion_keeps_table(tmp_path: Path) -> None:
    path, model = _reference_file(tmp_path)
    out = checkpoint.convert(path, CFG, tmp_path / "kit", slim_table=False, ema=True, source_name="unit")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == checkpoint.FORMAT and manifest["slim"] is False and manifest["weights"] == "ema"
    assert manifest["provenance"]["source_sha256"] == checkpoint.sha256_file(path)
    assert manifest["provenance"]["source_name"] == "unit"
    assert manifest["weights_sha256"] == checkpoint.sha256_file(out / "model.safetensors")
    kit = checkpoint.load(out)
    assert torch.equal(kit.state["puzzle_emb.weights"], model.puzzle_emb.weights)


def test_slim_conversion_keeps_mean_and_std_and_shrinks(tmp_path: Path) -> None:
    cfg = CFG.with_(num_puzzle_identifiers=20000)  # the table dominates, as in a released checkpoint
    path, model = _reference_file(tmp_path, cfg)
    out = checkpoint.convert(path, cfg, tmp_path / "slim")
    size = sum(f.stat().st_size for f in out.iterdir())
    trunk_bytes = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k != "puzzle_emb.weights")
    assert size < trunk_bytes + 64 * 1024 and size < path.stat().st_size / 5
    kit = checkpoint.load(out)
    assert kit.slim and "puzzle_emb.weights" not in kit.state
    table = model.puzzle_emb.weights
    torch.testing.assert_close(kit.state["puzzle_emb.mean"], table.mean(0))
    torch.testing.assert_close(kit.state["puzzle_emb.std"], table.std(0))
    assert json.loads((out / "manifest.json").read_text())["puzzle_emb_rows_dropped"] == 20000
    # Post-training on 37 new variants: every row starts at the checkpoint's mean row.
    fresh = checkpoint.build_model(kit, num_puzzle_identifiers=37)
    assert fresh.puzzle_emb.weights.shape == (37, cfg.puzzle_emb_ndim)
    assert torch.equal(fresh.puzzle_emb.weights, table.mean(0).expand(37, -1))
    for k, v in model.state_dict().items():
        if k != "puzzle_emb.weights":
            assert torch.equal(fresh.state_dict()[k], v), k


def test_slim_checkpoint_needs_a_row_count(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path)
    kit = checkpoint.load(checkpoint.convert(path, CFG, tmp_path / "slim"))
    with pytest.raises(CheckpointError, match="num_puzzle_identifiers"):
        checkpoint.build_model(kit)


def test_resize_normal_init_follows_column_statistics(tmp_path: Path) -> None:
    path, model = _reference_file(tmp_path, CFG.with_(num_puzzle_identifiers=4000))
    ckpt = checkpoint.load(path, CFG)
    table = checkpoint.resize_table(ckpt, 6000, "normal", torch.Generator().manual_seed(3))
    ref = model.puzzle_emb.weights
    assert table.shape == (6000, ref.shape[1])
    torch.testing.assert_close(table.mean(0), ref.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(table.std(0), ref.std(0), atol=0.1, rtol=0.1)
    with pytest.raises(ValueError, match="init"):
        checkpoint.resize_table(ckpt, 3, "zeros")


def test_a_one_row_table_slims_and_draws_finite_rows(tmp_path: Path) -> None:
    # a checkpoint pre-trained on one variant: the sample std of one row is NaN, which no floor removes
    path, model = _reference_file(tmp_path, CFG.with_(num_puzzle_identifiers=1))
    full = checkpoint.load(path, CFG)
    for ckpt in (full, checkpoint.slim(full)):
        assert torch.equal(ckpt.std_row(), torch.zeros(CFG.puzzle_emb_ndim))
        table = checkpoint.resize_table(ckpt, 5, "normal", torch.Generator().manual_seed(0))
        assert torch.isfinite(table).all()
        torch.testing.assert_close(table, model.puzzle_emb.weights[0].expand(5, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("folder", reference_subdirs("model"), ids=lambda p: p.name)
def test_fixture_checkpoints_slim_to_the_trunk(tmp_path: Path, folder: Path) -> None:
    src = next(folder.glob("step_*"))
    out = checkpoint.convert(src, folder / "config.json", tmp_path / "slim")
    kit = checkpoint.load(out)
    ref = checkpoint.load(src, folder / "config.json")
    for k, v in kit.state.items():
        if not k.startswith("puzzle_emb."):
            assert torch.equal(v, ref.state[k]), k
    torch.testing.assert_close(kit.mean_row(), ref.state["puzzle_emb.weights"].mean(0))


# ---- refusals --------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would write a marker file: the loader must refuse, never execute."""

    marker = ""

    def __reduce__(self):
        return (Path(self.marker).write_text, ("executed",))


def test_pickle_that_needs_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _Payload.marker = str(marker)
    path = tmp_path / "step_1"
    torch.save({"_orig_mod.model.inner.H_init": _Payload()}, path)
    with pytest.raises(CheckpointError, match="needs code to load and was refused"):
        checkpoint.load(path, CFG)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [
    (b"not a checkpoint at all", "not a torch checkpoint"),
    (b"", "not a torch checkpoint"),
])
def test_garbage_files_are_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "step_9"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        checkpoint.load(path, CFG)


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "step_2"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="state dict"):
        checkpoint.load(path, CFG)


def test_missing_prefix_is_named(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path, prefix="")
    with pytest.raises(CheckpointError, match="lacks the reference prefix"):
        checkpoint.load(path, CFG)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path)
    wrong = CFG.with_(expansion=8.0)
    with pytest.raises(CheckpointError, match=r"gate_up_proj.weight has shape \[512, 64\] but the config implies \[1024, 64\]"):
        checkpoint.load(path, wrong)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    path, model = _reference_file(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["_orig_mod.model.inner.lm_head.weight"]
    state["_orig_mod.model.inner.extra.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['lm_head.weight'\]; unexpected keys \['extra.weight'\]"):
        checkpoint.load(path, CFG)


def test_layer_count_mismatch(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path)
    with pytest.raises(CheckpointError, match="2 blocks under L_level.layers but the config implies L_layers=3"):
        checkpoint.load(path, CFG.with_(L_layers=3))


def test_reference_file_without_config_says_how(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path)
    with pytest.raises(CheckpointError, match="puzzle_emb_len cannot be read from weights"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="neither a file, a preset"):
        checkpoint.load(path, "no-such-config")


def test_kit_directory_problems(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="needs manifest.json and model.safetensors"):
        checkpoint.load(tmp_path)
    path, _ = _reference_file(tmp_path)
    out = checkpoint.convert(path, CFG, tmp_path / "kit")
    (out / "manifest.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not a valid manifest"):
        checkpoint.load(out)


def test_configs_from_reference_json_and_yaml(tmp_path: Path) -> None:
    yaml_text = (
        "arch:\n  H_cycles: 3\n  L_cycles: 4\n  L_layers: 2\n  expansion: 4\n  hidden_size: 512\n"
        "  loss:\n    loss_type: stablemax_cross_entropy\n    name: losses@ACTLossHead\n"
        "  name: recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1\n  num_heads: 8\n"
        "  puzzle_emb_len: 1\n  puzzle_emb_ndim: 512\n  pos_encodings: rope\n  halt_max_steps: 16\n"
        "  halt_exploration_prob: 0.1\n  forward_dtype: bfloat16\n  mlp_t: false\n  no_ACT_continue: true\n"
        "data_paths:\n- data/arc2concept-aug-1000\nglobal_batch_size: 768\n")
    from trm_core.checkpoint import _parse_simple_yaml

    parsed = _parse_simple_yaml(yaml_text)
    assert parsed["arch"]["loss"]["loss_type"] == "stablemax_cross_entropy"
    assert parsed["data_paths"] == ["data/arc2concept-aug-1000"] and parsed["global_batch_size"] == 768
    (tmp_path / "all_config.yaml").write_text(yaml_text)
    assert checkpoint.read_config_file(tmp_path / "all_config.yaml") == TRMConfig.from_name("trelis-emb1")
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 512, "pos_encodings": "none"}))
    with pytest.raises(CheckpointError, match="pos_encodings"):
        checkpoint.read_config_file(tmp_path / "bad.json")


def test_lora_is_folded_into_saved_weights() -> None:
    cfg = TRMConfig.from_name("tiny", num_puzzle_identifiers=4)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    model.add_lora(rank=2, alpha=4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    batch = _batch(cfg, ids=[1, 2, 3])
    adapted = _run(model, batch)
    plain = checkpoint.build_model(checkpoint.from_model(model))
    assert not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(_run(plain, batch), adapted, rtol=1e-4, atol=1e-4)


# ---- trm convert ------------------------------------------------------------------------------


def test_cli_convert(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(CFG.to_dict()))
    result = CliRunner().invoke(main, ["convert", str(path), "--config", str(cfg_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "MB ->" in result.output and checkpoint.load(tmp_path / "o").slim


def test_cli_convert_error_is_clean(tmp_path: Path) -> None:
    path, _ = _reference_file(tmp_path)
    result = CliRunner().invoke(main, ["convert", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Error:" in result.output and "pass its arch config" in result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "o")
