"""Registry names and the registry itself, as every command reads them (trm_core/hub.py): a path on
disk wins without reading the registry; a damaged registry or entry ends in one line naming the
file and the field, never a traceback; a checkpoint whose own record contradicts its registry
entry is refused when converted or bundled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trm_core import hub
from trm_cli import main

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pretrained" / "demo"
PLACEHOLDER = REPO / "submission" / "placeholder" / "arc-agi_test_challenges.json"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Point the registry at a file the test writes."""
    from trm_core import hub as registry_mod

    path = tmp_path / "registry.json"
    monkeypatch.setattr(registry_mod, "DEFAULT_PATH", path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


def _predict(spec: str, tmp_path: Path):
    return CliRunner().invoke(main, ["predict", "--checkpoint", spec, "--data", str(PLACEHOLDER), "--views", "1",
                                     "--device", "cpu", "--out", str(tmp_path / "s.json")])


@pytest.mark.parametrize("content, said", [
    ([1, 2], "expected an object with 'checkpoints', got list"),
    ({"checkpoints": [1]}, "'checkpoints' must be an object"),
    ({"checkpoints": {"x": {"hub_repo": 7, "filename": None}}}, "entry 'x' needs hub_repo and filename"),
    ({"checkpoints": {"x": {"path": "/nonexistent/ckpt", "optimizer": "original"}}},
     "its path /nonexistent/ckpt does not exist"),
    ({"checkpoints": {"x": {"path": str(DEMO), "optimizer": 7}}},
     "entry 'x': optimizer must be one of original, lucidrains, got 7"),
    ({"checkpoints": {"x": {"path": str(DEMO), "optimizer": "lucidrains", "ema": "yes"}}}, "ema must be true or false"),
    ({"checkpoints": {"x": {"path": str(DEMO), "optimizer": "original",
                            "config": {"preset": "tiny", "puzzle_emb_len": 10**30}}}}, "puzzle_emb_len must be"),
    ({"checkpoints": {"x": {"path": str(DEMO), "optimizer": "original", "config": 5}}}, "config must be an object"),
])
def test_a_damaged_registry_ends_in_one_line(registry, tmp_path, content, said) -> None:
    registry.write_text(json.dumps(content))
    res = _predict("x", tmp_path)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert said in res.output
    if "entry 'x'" in said or "must be an object" in said or "got list" in said:
        assert str(registry) in res.output  # the file read, not the default's name


def test_registry_text_that_is_not_json_names_the_file(registry, tmp_path) -> None:
    registry.write_bytes(b"\xff{not json")
    res = _predict("x", tmp_path)
    assert res.exit_code == 1 and "Traceback" not in res.output and str(registry) in res.output


def test_a_path_on_disk_is_taken_without_reading_the_registry(registry, tmp_path) -> None:
    registry.write_text("[")  # damaged: reading it would fail
    found = hub.locate(str(DEMO))
    assert found.path == DEMO.resolve() and found.entry is None
    res = _predict(str(DEMO), tmp_path)
    assert res.exit_code == 0, res.output


def test_a_registry_name_that_is_a_local_kit_folder_works_in_predict(registry, tmp_path) -> None:
    registry.write_text(json.dumps({"checkpoints": {"my-demo": {"path": str(DEMO), "config": {"preset": "tiny"},
                                                                "optimizer": "original", "ema": True}}}))
    res = _predict("my-demo", tmp_path)
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "s.json").read_text())) == len(json.loads(PLACEHOLDER.read_text()))


def test_the_repository_registry_resolves_the_demo_by_name(tmp_path) -> None:
    found = hub.locate("demo")
    assert found.path == DEMO.resolve() and found.name == "demo"


def test_a_checkpoint_contradicting_its_registry_entry_is_refused(registry, tmp_path) -> None:
    """The demo was trained with `original` (its train record): an entry saying lucidrains is wrong."""
    from bundle import BundleError
    from bundle.checkpoint_source import copy_checkpoint, resolve_checkpoint

    entry = {"path": str(DEMO), "config": {"preset": "tiny"}, "optimizer": "lucidrains", "ema": True}
    registry.write_text(json.dumps({"checkpoints": {"wrong": entry}}))
    res = CliRunner().invoke(main, ["convert", "wrong", "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "trained with original (train record)" in res.output and "registry:wrong says lucidrains" in res.output
    got = resolve_checkpoint("wrong", tmp_path / "cache")
    with pytest.raises(BundleError, match="correct the registry entry"):
        copy_checkpoint(got, tmp_path / "ship")


def test_a_name_too_long_for_the_system_is_refused_cleanly(registry, tmp_path) -> None:
    registry.write_text(json.dumps({"checkpoints": {}}))
    with pytest.raises(hub.SourceError, match=r"\(5000 characters\) is not a file"):
        hub.locate("a" * 5000)  # Path.exists raises OSError (name too long) on it
    res = CliRunner().invoke(main, ["convert", "b" * 5000, "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output and len(res.output) < 600
