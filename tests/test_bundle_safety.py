"""What the bundle build refuses: keys reached through links or hidden in weights, broken checkpoints."""

import json
import os
import shutil
from pathlib import Path

import pytest

from bundle import BundleError
from bundle.build import BundleOptions, build_bundle
from bundle.checkpoint_source import ResolvedCheckpoint, copy_checkpoint
from bundle.publish import find_credentials

REPO = Path(__file__).resolve().parent.parent
HF_TOKEN = "hf_" + "Ab3" * 12
KAGGLE_JSON = '{"username": "alice", "key": "0123456789abcdef0123456789abcdef"}'


def _build(tmp_path: Path, kit: Path) -> None:
    build_bundle(BundleOptions(checkpoint=str(kit), out=tmp_path / "out"))


def _demo(folder: Path) -> Path:
    shutil.copytree(REPO / "pretrained" / "demo", folder)
    return folder


def test_a_weights_link_to_a_key_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "kaggle.json").write_text(KAGGLE_JSON)
    kit = _demo(tmp_path / "ck")
    (kit / "model.safetensors").unlink()
    os.symlink(tmp_path / "kaggle.json", kit / "model.safetensors")
    with pytest.raises(BundleError, match=r"ck/model.safetensors is a symbolic link to .*kaggle.json, outside"):
        _build(tmp_path, kit)
    assert not (tmp_path / "out" / "dataset" / "checkpoint" / "model.safetensors").exists()


def test_the_scan_reads_weights_and_reports_links(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text(KAGGLE_JSON)
    scanned = tmp_path / "bundle"
    scanned.mkdir()
    (scanned / "model.safetensors").write_text(KAGGLE_JSON)  # any suffix is read
    (scanned / "lib.so").write_bytes(b"\x7fELF\x00" + HF_TOKEN.encode() + b"\x00")
    os.symlink(tmp_path / "outside.txt", scanned / "notes.md")
    os.symlink(tmp_path, scanned / "linked-dir")
    found = {(f.path, f.reason.split(" (")[0]) for f in find_credentials(scanned)}
    assert ("model.safetensors", "Kaggle API key") in found
    assert ("lib.so", "Hugging Face token") in found
    assert any(p == "notes.md" and "outside" in r for p, r in found)
    assert any(p == "linked-dir" and "symbolic link" in r for p, r in found)
    assert not any(p.startswith("linked-dir/") for p, _ in found)  # never followed


def test_a_token_in_safetensors_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from trm_core import checkpoint

    kit = _demo(tmp_path / "ck")
    state = load_file(kit / "model.safetensors")
    cfg = json.loads((kit / "manifest.json").read_text())["config"]
    save_file(state, str(kit / "model.safetensors"), metadata={"trm_config": json.dumps(cfg), "note": HF_TOKEN})
    manifest = json.loads((kit / "manifest.json").read_text())
    manifest["weights_sha256"] = checkpoint.sha256_file(kit / "model.safetensors")
    (kit / "manifest.json").write_text(json.dumps(manifest))
    checkpoint.load(kit)  # a loadable checkpoint: only the scan stops it
    with pytest.raises(BundleError, match=r"found in .*/checkpoint: model.safetensors \(Hugging Face token"):
        _build(tmp_path, kit)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    kit = _demo(tmp_path / "ck")
    data = (kit / "model.safetensors").read_bytes()
    (kit / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(BundleError, match="does not load: .*weights_sha256"):
        _build(tmp_path, kit)


def test_a_wrong_shape_checkpoint_is_refused(tmp_path: Path) -> None:
    import torch

    from trm_core import checkpoint
    from trm_core.model import TRM, TRMConfig

    from safetensors.torch import save_file

    kit = _demo(tmp_path / "ck")
    small = TRMConfig.from_name("tiny", hidden_size=32, puzzle_emb_ndim=32)
    other = checkpoint.slim(checkpoint.from_model(TRM(small, generator=torch.Generator().manual_seed(0))))
    save_file(other.state, str(kit / "model.safetensors"))  # no config in its metadata: the shapes tell
    manifest = json.loads((kit / "manifest.json").read_text())
    manifest["weights_sha256"] = checkpoint.sha256_file(kit / "model.safetensors")
    (kit / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not load: .* has shape .* but the config implies"):
        _build(tmp_path, kit)


def test_a_manifest_config_list_is_refused(tmp_path: Path) -> None:
    kit = _demo(tmp_path / "ck")
    manifest = json.loads((kit / "manifest.json").read_text())
    manifest["config"] = list(manifest["config"].values())
    (kit / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'config' must be an object"):
        _build(tmp_path, kit)


def test_hub_cache_links_inside_the_cached_repo_are_copied(tmp_path: Path) -> None:
    repo = tmp_path / "models--o--r"
    snap = repo / "snapshots" / "abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for name, body in (("manifest.json", b"{}"), ("model.safetensors", b"weights")):
        (repo / "blobs" / name).write_bytes(body)
        os.symlink(Path("..", "..", "blobs", name), snap / name)
    copy_checkpoint(ResolvedCheckpoint(snap, "o/r", 9, link_root=repo), tmp_path / "dest")
    assert (tmp_path / "dest" / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "dest" / "model.safetensors").is_symlink()
    with pytest.raises(BundleError, match="outside the checkpoint folder"):
        copy_checkpoint(ResolvedCheckpoint(snap, "o/r", 9), tmp_path / "dest2")


def _kit_with_key_in_manifest(folder: Path) -> Path:
    kit = _demo(folder)
    manifest = json.loads((kit / "manifest.json").read_text())
    manifest.setdefault("provenance", {})["env"] = {"KAGGLE_KEY": "0123456789abcdef0123456789abcdef"}
    (kit / "manifest.json").write_text(json.dumps(manifest))
    return kit


def test_a_refused_build_leaves_nothing_in_out(tmp_path: Path) -> None:
    kit = _kit_with_key_in_manifest(tmp_path / "ck")
    with pytest.raises(BundleError, match=r"nothing written: .*dataset/checkpoint: manifest.json \(KAGGLE_KEY") as e:
        _build(tmp_path, kit)
    assert "0123456789abcdef" not in str(e.value)
    assert not (tmp_path / "out").exists()  # not even an empty tree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # and no staging folder left beside it
    # over an earlier bundle, the earlier bundle stays as it was
    (tmp_path / "out" / "dataset").mkdir(parents=True)
    (tmp_path / "out" / "dataset" / "earlier.txt").write_text("earlier")
    with pytest.raises(BundleError, match="KAGGLE_KEY"):
        _build(tmp_path, kit)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in sorted((tmp_path / "out").rglob("*"))] == [
        "dataset", "dataset/earlier.txt"]


def test_a_build_failing_after_the_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="--own-wheel .* does not exist"):
        build_bundle(BundleOptions(checkpoint=str(_demo(tmp_path / "ck")), out=tmp_path / "a" / "out",
                                   own_wheel=tmp_path / "missing.whl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("linked", ["out", "out/dataset", "out/kernel"])
def test_out_is_never_written_through_a_link(tmp_path: Path, linked: str) -> None:
    from click.testing import CliRunner

    from trm_cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "unrelated.txt").write_text("not for the bundle")
    (tmp_path / "out").mkdir()
    if linked == "out":
        (tmp_path / "out").rmdir()
    os.symlink(elsewhere, tmp_path / linked)
    kit = _demo(tmp_path / "ck")
    result = CliRunner().invoke(main, ["bundle", "--checkpoint", str(kit), "--out", str(tmp_path / "out"),
                                       "--owner", "alice"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{linked.split('/')[-1]} is a symbolic link" in result.output and "never written through a link" in result.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["unrelated.txt"]  # nothing written through it
