"""Loud before a wasted submission: the setup cell records every check in trm-run/setup.json (the
GPUs against the accelerator, the bundle id, the Python tag, pip's exit status and output), and
the last cell fails the notebook, after submission.json is written, when the run answered nothing
with a model, had fewer GPUs than planned or failed to set up; never in the competition rerun."""

import json
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

from bundle.execute import execute_notebook
from bundle.manifest import write_manifest
from bundle.notebook import NotebookSettings, build_notebook, code_cells, write_notebook
from bundle.run_config import ACCELERATORS, RunConfig
from submission.env import run_kind
from test_bundle_notebook import CHALLENGES, KERNEL_TAG, assert_valid, kaggle_tree, run_with_stand_in_runner

START = 1_700_000_000.0
KINDS = {"rerun": {"KAGGLE_IS_COMPETITION_RERUN": "True", "KAGGLE_KERNEL_RUN_TYPE": "Batch"},
         "commit": {"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, "interactive": {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"},
         "local": {}}


def cell_namespace(index: int, **settings) -> dict:
    """The functions of a generated cell (its main() not run); `settings` replace its settings' values."""
    src = code_cells(build_notebook(NotebookSettings(bundle_id="0123456789abcdef", trm_version="0.1.0")))[index]
    for key, value in settings.items():
        start = src.index(f"\n{key} = ") + 1
        src = src[:start] + f"{key} = {value!r}" + src[src.index("\n", start):]
    ns = {"__name__": "not-main"}
    exec(compile(src, f"<cell {index}>", "exec"), ns)
    return ns


FINAL = cell_namespace(2)


def setup_record(ok=True, problems=(), accelerator="", expected=0, found=0, start=START) -> dict:
    return {"ok": ok, "start_time": start, "problems": list(problems),
            "checks": {"gpus": {"ok": True, "accelerator": accelerator, "expected": expected, "found": found}}}


def run_record(adapted=3, unadapted=0, fallback=0, start=START, device="cpu", world=1) -> dict:
    return {"start_time": start, "device": device, "world": world,
            "answers": {"test_inputs": adapted + unadapted + fallback,
                        "counts": {"adapted": adapted, "unadapted": unadapted, "fallback": fallback}}}


# outcome -> (setup.json, run.json, the run cell started the runner, the reason expected or None)
OUTCOMES = {
    "answered": (setup_record(), run_record(), True, None),
    "unadapted only": (setup_record(), run_record(adapted=0, unadapted=2, fallback=1), True, None),
    "fallback only": (setup_record(), run_record(adapted=0, fallback=4), True, "0 of 4 test inputs answered"),
    "no run.json": (setup_record(), None, True, "wrote no trm-run/run.json"),
    "runner not started": (setup_record(), run_record(), False, "wrote no trm-run/run.json"),
    "stale run.json": (setup_record(), run_record(start=START - 3600), True, "wrote no trm-run/run.json"),
    "pip failed": (setup_record(False, ["pip install exited with status 1"]), None, False, "setup: pip install"),
    "other bundle id": (setup_record(False, ["this notebook was generated for bundle a but ..."]), run_record(),
                        True, "generated for bundle a"),
    "no setup.json": (None, run_record(), True, "setup recorded no checks"),
    "gpus short": (setup_record(False, ["1 GPU(s) present but the bundle was built for NvidiaL4X4 with 4"],
                                "NvidiaL4X4", 4, 1), run_record(device="cuda", world=1), True, "1 GPU(s) present"),
    "runner on fewer gpus": (setup_record(accelerator="NvidiaL4X4", expected=4, found=4),
                             run_record(device="cuda", world=2), True, "the runner used 2 GPU(s)"),
    "runner on the cpu": (setup_record(accelerator="NvidiaTeslaT4", expected=2, found=2),
                          run_record(device="cpu", world=1), True, "the runner used 0 GPU(s)"),
    "all gpus": (setup_record(accelerator="NvidiaL4X4", expected=4, found=4), run_record(device="cuda", world=4),
                 True, None),
    "garbage records": ({"ok": "yes", "start_time": START, "problems": 7, "checks": []}, {"start_time": START,
                        "answers": {"counts": {"adapted": "many"}}}, True, "setup: failed"),
    "nan count": (setup_record(), {"start_time": START, "answers": {"counts": {"adapted": float("nan")}}}, True,
                  "0 test inputs answered"),
    "nan start": (setup_record(start=float("nan")), run_record(), True, "setup recorded no checks"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
def test_the_last_cell_fails_a_wasted_run_except_in_the_rerun(kind: str, outcome: str) -> None:
    setup, run, started, expected = OUTCOMES[outcome]
    reasons = FINAL["wasted_reasons"](setup, run, START, started)
    if expected is None:
        assert reasons == []
    else:
        assert any(expected in r for r in reasons), reasons
    assert FINAL["run_kind"](KINDS[kind]) == kind
    assert FINAL["must_raise"](kind, reasons) == (bool(reasons) and kind != "rerun")
    if reasons:  # one block, saying why and whether it fails the notebook
        lines = FINAL["banner"](kind, reasons, "/kaggle/working/submission.json")
        assert lines[0] == lines[2] == lines[-1] and set(lines[0]) == {"#"}
        assert all(f"  - {r}" in lines for r in reasons)
        assert ("this cell raises" in "\n".join(lines)) == (kind != "rerun")


@pytest.mark.parametrize("environ", [*KINDS.values(), {"KAGGLE_IS_COMPETITION_RERUN": "0"},
                                     {"KAGGLE_IS_COMPETITION_RERUN": "false", "KAGGLE_KERNEL_RUN_TYPE": "x"},
                                     {"KAGGLE_KERNEL_RUN_TYPE": " BATCH "}, {"KAGGLE_IS_COMPETITION_RERUN": " "}])
def test_the_last_cell_tells_the_run_kind_as_the_runner_does(environ: dict) -> None:
    assert FINAL["run_kind"](environ) == run_kind(environ)


# ---- the setup cell's checks ---------------------------------------------------------------------------

def fake_nvidia_smi(folder: Path, gpus: int, fails: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'echo "GPU {i}: NVIDIA L4 (UUID: GPU-{i:04d})"\n' for i in range(gpus))
    (folder / "nvidia-smi").write_text("#!/bin/sh\n" + ("exit 9\n" if fails else lines))
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def run_setup(tmp_path: Path, monkeypatch, capsys, manifest_tag: str = KERNEL_TAG, notebook_id: str | None = None,
              version: str | None = None, **settings) -> tuple[dict, str]:
    """The setup cell's main() on a Kaggle-like tree; (setup.json, what it printed)."""
    try:
        installed = metadata.version("trm-kit")
    except metadata.PackageNotFoundError:
        pytest.skip("trm-kit is not installed in this environment (pip install -e .)")
    bundle = tmp_path / "input" / "datasets" / "alice" / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "README").write_text("nothing to install: trm-kit is installed")
    manifest = write_manifest(bundle, trm_version=installed, target="test", python_tag=manifest_tag)
    for key, value in {"TRM_KAGGLE_INPUT": tmp_path / "input", "TRM_KAGGLE_WORKING": tmp_path / "working",
                       "TRM_SCRATCH": tmp_path / "scratch", "TRM_START_TIME": repr(START)}.items():
        monkeypatch.setenv(key, str(value))
    for key in ("TRM_SETUP_OK", "TRM_BUNDLE_DIR", "TRM_SETUP_PROBLEM", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    ns = cell_namespace(0, BUNDLE_ID=notebook_id or manifest["bundle_id"], PACKAGE_VERSION=version or installed,
                        **settings)
    ns["main"]()
    return json.loads((tmp_path / "working" / "trm-run" / "setup.json").read_text()), capsys.readouterr().out


def test_setup_records_a_clean_setup_and_prints_the_run_config_first(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', 4)}{os.pathsep}{os.environ['PATH']}")
    record, out = run_setup(tmp_path, monkeypatch, capsys, ACCELERATOR="NvidiaL4X4", EXPECTED_GPUS=4,
                            RUN_CONFIG={"accelerator": "NvidiaL4X4", "options": {"views_max": 256}})
    assert record["ok"] is True and record["problems"] == [] and record["installed"] is True, record
    assert record["start_time"] == START and record["run_config"]["options"] == {"views_max": 256}
    checks = record["checks"]
    assert {k: checks[k]["ok"] for k in checks} == dict.fromkeys(
        ["gpus", "bundle", "bundle_id", "wheels", "python_tag", "pip"], True)
    assert checks["gpus"]["found"] == 4 and checks["gpus"]["names"] == ["NVIDIA L4"] * 4
    assert checks["pip"]["exit_code"] == 0 and checks["pip"]["tail"]
    lines = out.splitlines()
    assert "run configuration" in lines[0] and "views_max" in "\n".join(lines[:4])


def test_setup_records_a_python_tag_mismatch(tmp_path, monkeypatch, capsys) -> None:
    record, out = run_setup(tmp_path, monkeypatch, capsys, manifest_tag="cp39")
    assert record["ok"] is False and record["checks"]["python_tag"] == {
        "ok": False, "bundle": "cp39", "kernel": KERNEL_TAG, "target_image": "test"}
    assert any("chosen for cp39" in p and KERNEL_TAG in p for p in record["problems"])


def test_setup_records_a_dataset_of_another_bundle(tmp_path, monkeypatch, capsys) -> None:
    record, out = run_setup(tmp_path, monkeypatch, capsys, notebook_id="fedcba9876543210")
    assert record["ok"] is False and record["checks"]["bundle_id"]["ok"] is False
    assert record["checks"]["pip"] == {"ok": False, "skipped": "the wheels were refused"}
    assert any("generated for bundle fedcba9876543210" in p for p in record["problems"]), record["problems"]
    assert os.environ.get("TRM_SETUP_OK") == "0"


def test_setup_records_a_pip_failure_with_the_tail_of_its_output(tmp_path, monkeypatch, capsys) -> None:
    record, out = run_setup(tmp_path, monkeypatch, capsys, version="999.0.0")
    pip = record["checks"]["pip"]
    assert record["ok"] is False and pip["ok"] is False and pip["exit_code"] not in (0, None)
    assert any("trm-kit==999.0.0" in line for line in pip["tail"]), pip["tail"]
    assert any("pip install exited with status" in p for p in record["problems"])
    assert record["installed"] is False and os.environ.get("TRM_SETUP_OK") == "0"


@pytest.mark.parametrize("how", ["nvidia-smi", "proc", "none", "nvidia-smi fails", "hidden"])
def test_setup_counts_the_gpus_against_the_accelerator(tmp_path, monkeypatch, how) -> None:
    ns = cell_namespace(0, ACCELERATOR="NvidiaTeslaT4", EXPECTED_GPUS=2)
    monkeypatch.setenv("TRM_START_TIME", repr(START))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ns["NVIDIA_PROC"] = str(tmp_path / "no-driver")
    bin_dir = tmp_path / "bin"
    if how in ("nvidia-smi", "hidden"):
        fake_nvidia_smi(bin_dir, 2)
    elif how == "nvidia-smi fails":
        fake_nvidia_smi(bin_dir, 0, fails=True)
    elif how == "proc":
        for i in range(2):
            (tmp_path / "no-driver" / f"0000:0{i}:00.0").mkdir(parents=True)
            (tmp_path / "no-driver" / f"0000:0{i}:00.0" / "information").write_text("Model: \t Tesla T4\nIRQ: 1\n")
    if how == "hidden":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/nonexistent")  # no real nvidia-smi is found
    record = {"ok": True, "checks": {}, "problems": []}
    ns["check_gpus"](record)
    gpus = record["checks"]["gpus"]
    found = {"nvidia-smi": 2, "proc": 2, "none": 0, "nvidia-smi fails": 0, "hidden": 1}[how]
    assert gpus["found"] == found and gpus["expected"] == 2 and gpus["ok"] == (found == 2), gpus
    assert record["ok"] == (found == 2) and len(record["problems"]) == (found != 2)
    if how == "proc":
        assert gpus["names"] == ["Tesla T4", "Tesla T4"]


# ---- whole notebooks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["commit", "rerun"])
def test_a_run_short_of_gpus_fails_the_commit_not_the_rerun(tmp_path, kind) -> None:
    try:
        version = metadata.version("trm-kit")
    except metadata.PackageNotFoundError:
        pytest.skip("trm-kit is not installed in this environment (pip install -e .)")
    manifest, _ = kaggle_tree(tmp_path, False, version)
    nb = build_notebook(NotebookSettings(bundle_id=manifest["bundle_id"], trm_version=version,
                                         run=RunConfig(accelerator=ACCELERATORS["l4x4"])))  # 4 GPUs expected
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    proc, work = run_with_stand_in_runner(tmp_path, manifest["bundle_id"], version, notebook=path,
                                          env={**KINDS[kind], "PATH": f"{fake_nvidia_smi(tmp_path / 'bin', 1)}"
                                               f"{os.pathsep}{os.environ['PATH']}"})
    out = proc.stdout + proc.stderr
    assert "fake runner done" in out  # the runner still ran, on what there is
    assert "THIS RUN IS NOT WORTH SUBMITTING" in out and "1 GPU(s) present" in out, out
    assert proc.returncode == (0 if kind == "rerun" else 1), out
    assert ("WastedRun" in proc.stderr) == (kind != "rerun")
    assert_valid(json.loads((work / "submission.json").read_text()))
    assert json.loads((work / "trm-run" / "setup.json").read_text())["checks"]["gpus"]["found"] == 1


def test_a_run_answered_by_the_model_passes(tmp_path) -> None:
    try:
        version = metadata.version("trm-kit")
    except metadata.PackageNotFoundError:
        pytest.skip("trm-kit is not installed in this environment (pip install -e .)")
    manifest, _ = kaggle_tree(tmp_path, False, version)
    proc, work = run_with_stand_in_runner(tmp_path, manifest["bundle_id"], version, env=KINDS["commit"])
    assert proc.returncode == 0 and "run checked: set up, answered by a model (commit run)" in proc.stdout, \
        proc.stdout + proc.stderr
    assert "NOT WORTH SUBMITTING" not in proc.stdout
