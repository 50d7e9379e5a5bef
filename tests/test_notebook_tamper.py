"""The notebook refuses wheels that are not the ones built, before pip runs; the last cell reads a
BOM'd challenges file and still writes the submission."""

import json
from importlib import metadata
from pathlib import Path

import pytest

from bundle.manifest import write_manifest
from bundle.notebook import NotebookSettings, build_notebook, code_cells
from test_bundle_notebook import CHALLENGES, assert_valid, run_with_stand_in_runner


def _notebook(tmp_path: Path, tamper) -> tuple[str, Path]:
    try:
        version = metadata.version("trm-kit")
    except metadata.PackageNotFoundError:
        pytest.skip("trm-kit is not installed in this environment (pip install -e .)")
    bundle = tmp_path / "input" / "datasets" / "alice" / "trm-kit-bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\x00" * 18)

    (bundle / "checkpoint").mkdir()
    (bundle / "checkpoint" / "model.safetensors").write_bytes(b"\x00" * 64)
    (bundle / "checkpoint" / "manifest.json").write_text('{"slim": true}')
    manifest = write_manifest(bundle, trm_version=version, target="test", python_tag="cp00")
    comp = tmp_path / "input" / "competitions" / "arc"
    comp.mkdir(parents=True)
    (comp / "arc-agi_test_challenges.json").write_text(json.dumps(CHALLENGES))
    tamper(bundle)
    proc, work = run_with_stand_in_runner(tmp_path, manifest["bundle_id"], version)
    # refused wheels install nothing: the run is the fallback only, and the notebook fails loudly
    assert proc.returncode == 1 and "THIS RUN IS NOT WORTH SUBMITTING" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr, work


@pytest.mark.parametrize("how", ["changed", "added", "relisted"])
def test_tampered_wheels_are_not_installed(tmp_path: Path, how: str) -> None:
    def tamper(bundle: Path) -> None:
        wheel = bundle / "wheels" / "evil-1.0-py3-none-any.whl"
        if how == "changed":
            wheel.write_bytes(wheel.read_bytes()[:-1] + b"\x01")
        elif how == "added":
            (bundle / "wheels" / "trm_kit-9.9-py3-none-any.whl").write_bytes(b"PK")
        else:  # the wheel changed and the manifest rewritten to match: the bundle id no longer does
            from bundle.manifest import MARKER_NAME, list_files

            wheel.write_bytes(b"PK\x05\x06" + b"\x01" * 18)
            marker = json.loads((bundle / MARKER_NAME).read_text())
            marker["files"] = list_files(bundle)
            (bundle / MARKER_NAME).write_text(json.dumps(marker))

    out, work = _notebook(tmp_path, tamper)
    assert "not installing them" in out and "running: " not in out  # pip never ran
    assert "fake runner done" not in out  # nor the runner
    problems = json.loads((work / "trm-run" / "setup.json").read_text())["problems"]
    assert problems and ("evil" in problems[0] or "trm_kit-9.9" in problems[0] or "bundle id" in problems[0])
    assert_valid(json.loads((work / "submission.json").read_text()))  # the fallback, written by the last cell


def test_the_last_cell_reads_a_bom_challenges_file(tmp_path: Path, monkeypatch) -> None:
    inp, work = tmp_path / "input", tmp_path / "working"
    (inp / "c").mkdir(parents=True)
    work.mkdir()
    (inp / "c" / "arc-agi_test_challenges.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(CHALLENGES).encode())
    monkeypatch.setenv("TRM_KAGGLE_INPUT", str(inp))
    monkeypatch.setenv("TRM_KAGGLE_WORKING", str(work))
    monkeypatch.delenv("TRM_CHALLENGES_FILE", raising=False)
    src = code_cells(build_notebook(NotebookSettings(bundle_id="0123456789abcdef", trm_version="0.1.0")))[2]
    exec(compile(src, "<final cell>", "exec"), {"__name__": "__main__"})
    sub = json.loads((work / "submission.json").read_text())
    assert_valid(sub)
    assert sorted(sub) == sorted(CHALLENGES)
