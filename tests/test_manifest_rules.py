"""Kit manifests are complete or refused: arch fields, the weights' own config, weights_sha256."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trm_core import checkpoint
from trm_core.checkpoint import CheckpointError
from trm_cli import main

REPO = Path(__file__).resolve().parent.parent


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(kit: Path, change) -> None:
    m = json.loads((kit / "manifest.json").read_text())
    change(m)
    (kit / "manifest.json").write_text(json.dumps(m))


def test_the_demo_checkpoint_loads() -> None:
    assert checkpoint.load(REPO / "pretrained" / "demo").config.hidden_size == 64


@pytest.mark.parametrize("name", ["H_cycles", "L_cycles", "puzzle_emb_len", "forward_dtype"])
def test_a_missing_arch_field_is_named(tmp_path: Path, micro_checkpoint: Path, name: str) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    _edit(kit, lambda m: m["config"].pop(name))
    with pytest.raises(CheckpointError, match=f"config lacks {name}"):
        checkpoint.load(kit)


def test_a_config_that_is_not_an_object_is_refused(tmp_path: Path, micro_checkpoint: Path) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    _edit(kit, lambda m: m.update(config=[1, 2]))
    with pytest.raises(CheckpointError, match="'config' must be an object"):
        checkpoint.load(kit)


def test_a_field_the_weights_disagree_with_is_named(tmp_path: Path, micro_checkpoint: Path) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    _edit(kit, lambda m: m["config"].update(num_heads=4))  # same shapes: only the saved config tells
    with pytest.raises(CheckpointError, match="num_heads is 2 in the weights but 4 in the manifest"):
        checkpoint.load(kit)


def test_weights_that_changed_after_the_manifest_are_refused(tmp_path: Path, micro_checkpoint: Path) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    other = checkpoint.load(kit)
    other.state = {k: v + 1 for k, v in other.state.items()}
    checkpoint.save(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", kit / "model.safetensors")
    with pytest.raises(CheckpointError, match="weights_sha256 is .* the manifest says"):
        checkpoint.load(kit)
    assert checkpoint.load(kit, verify=False).config == other.config  # the documented skip


def test_a_manifest_without_weights_sha256_is_refused(tmp_path: Path, micro_checkpoint: Path) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    _edit(kit, lambda m: m.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match="weights_sha256 is missing"):
        checkpoint.load(kit)


def test_a_truncated_weights_file_is_refused(tmp_path: Path, micro_checkpoint: Path) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    data = (kit / "model.safetensors").read_bytes()
    (kit / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoint.load(kit, verify=False)


def test_convert_does_not_invent_missing_values(tmp_path: Path, micro_checkpoint: Path) -> None:
    kit = _copy(micro_checkpoint, tmp_path / "kit")
    _edit(kit, lambda m: [m["config"].pop(k) for k in ("H_cycles", "L_cycles", "puzzle_emb_len")])
    res = CliRunner().invoke(main, ["convert", str(kit), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and "config lacks H_cycles, L_cycles, puzzle_emb_len" in res.output
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_reference_config_file_without_cycles_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 512, "num_heads": 8, "expansion": 4, "L_layers": 2,
                                "puzzle_emb_ndim": 512, "halt_max_steps": 16}))
    with pytest.raises(CheckpointError, match="lacks H_cycles, L_cycles"):
        checkpoint.read_config_file(path)
