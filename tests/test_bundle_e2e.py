"""End to end: a bundle built from the demo checkpoint installs offline into a fresh environment that
has torch and nothing else of ours (as the Kaggle image), and its generated notebook, run there on a
Kaggle-like folder tree, leaves a valid submission.json answered by the model.

Slow (a virtual environment, wheel downloads, a real runner on a CPU), so marked `slow`. The build
downloads the missing wheels with pip; when the package registry cannot be reached the test is
skipped with the reason. The notebook run itself has no network: pip's config files are ignored and
every proxy points at a closed port, so anything that is not in the bundle cannot be installed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundle import BundleError
from bundle.build import BundleOptions, build_bundle
from bundle.execute import execute_notebook
from bundle.notebook import NOTEBOOK_NAME
from bundle.wheels import WheelFile
from trm_core.submission_file import validate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pretrained" / "demo"
PLACEHOLDER = REPO / "submission" / "placeholder" / "arc-agi_test_challenges.json"
TORCH = "torch==2.13.0"  # the image's torch: the bundle must never vendor it
TASKS = 4  # placeholder tasks in the run: the runner's smoke run predicts its first 4 tasks
BUDGET_S = 300  # notebook start (before the install) to the runner's deadline
MARGIN_S = 360  # the run cell's margin: above its 300 s final-cell reserve, so its hard stop follows the deadline
COMPETITION, OWNER, SLUG = "arc-prize-2026-arc-agi-2", "alice", "trm-kit-bundle"
CLOSED = "http://127.0.0.1:9"  # a proxy nobody listens on: any download attempt fails at once
# what pip prints when it cannot reach an index (several pip versions)
NETWORK_ERRORS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "Connection refused",
                  "ConnectTimeoutError", "Read timed out", "ProxyError", "Could not fetch URL")


def run(cmd: list, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """cmd with output captured; by default in this environment minus PYTHONPATH (which would show the
    fresh interpreter this checkout's packages)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)


def skip_if_offline(what: str, text: str) -> None:
    """Skip, quoting pip's complaint, when `text` (pip's output) says the network failed; else return."""
    line = next((line for line in text.splitlines() if any(m in line for m in NETWORK_ERRORS)), None)
    if line is not None:
        pytest.skip(f"{what}: the package registry is not reachable ({line.strip()[:240]})")


def clean_env(monkeypatch) -> None:
    """This process's environment without what would let the fresh one see our packages or an index."""
    for key in list(os.environ):
        if key.startswith(("PIP_", "KAGGLE_", "TRM_")) or key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """A fresh virtual environment holding torch and its own dependencies only: (python, freeze file)."""
    root = tmp_path_factory.mktemp("image")
    proc = run([sys.executable, "-m", "venv", root / "venv"])
    assert proc.returncode == 0, proc.stderr
    python = root / "venv" / "bin" / "python"
    proc = run([python, "-m", "pip", "install", "--disable-pip-version-check", TORCH])
    if proc.returncode != 0:
        skip_if_offline(f"pip install {TORCH}", proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = run([python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"]).stdout.strip()
    freeze = run([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"])
    assert freeze.returncode == 0, freeze.stderr
    lines = freeze.stdout.splitlines()
    assert any(re.fullmatch(r"torch==2\.13\.0(\+\w+)?", line) for line in lines), lines
    assert not any(line.split("==")[0].lower() in ("numpy", "numba", "safetensors", "trm-kit") for line in lines), lines
    snapshot = root / "image-freeze.txt"
    snapshot.write_text(f"# python-version: {version}\n# pip list --format=freeze of a fresh venv with {TORCH}\n"
                        + freeze.stdout)
    return python, snapshot


def kaggle_tree(root: Path, dataset: Path, tasks: int) -> dict[str, Path]:
    """input/competitions/<slug>/ (the first `tasks` placeholder tasks), input/datasets/<owner>/<slug>/
    (a copy of the built dataset folder), working/ and scratch/."""
    comp = root / "input" / "competitions" / COMPETITION
    comp.mkdir(parents=True)
    raw = json.loads(PLACEHOLDER.read_text())
    challenges = dict(list(raw.items())[:tasks])
    (comp / "arc-agi_test_challenges.json").write_text(json.dumps(challenges))
    bundle = root / "input" / "datasets" / OWNER / SLUG
    shutil.copytree(dataset, bundle)
    dirs = {"input": root / "input", "bundle": bundle, "working": root / "working", "scratch": root / "scratch"}
    dirs["working"].mkdir()
    dirs["scratch"].mkdir()
    return {**dirs, "challenges": comp / "arc-agi_test_challenges.json"}


def test_bundle_installs_offline_and_the_notebook_answers_with_the_model(tmp_path, image_venv, monkeypatch):
    python, snapshot = image_venv

    # 1. build, as a user would: the demo checkpoint, a custom target, wheels from the registry, our
    #    own wheel built from this checkout
    try:
        result = build_bundle(BundleOptions(checkpoint=str(DEMO), out=tmp_path / "out", target=str(snapshot),
                                            owner=OWNER, slug=SLUG, competition=COMPETITION,
                                            runner_margin_s=MARGIN_S,
                                            # the notebook runs on this CPU: a bundle for 4xL4 would rightly
                                            # fail its last cell as a run without the GPUs it was built for
                                            accelerator="none"))
    except BundleError as e:
        skip_if_offline("pip download of the bundle's wheels", str(e))
        raise
    wheels = {WheelFile.parse(p).name: WheelFile.parse(p) for p in (result.dataset_dir / "wheels").glob("*.whl")}
    assert {"trm-kit", "numpy", "numba", "llvmlite", "safetensors", "click"} <= set(wheels), sorted(wheels)
    assert not any(name == "torch" or name.startswith("nvidia-") for name in wheels), sorted(wheels)
    assert {d.requirement.key: d.action for d in result.decisions}["torch"] == "image"
    assert result.manifest["python_tag"] == f"cp{sys.version_info[0]}{sys.version_info[1]}"

    # 2. the Kaggle-like tree and the notebook run in the fresh environment, with no index reachable
    dirs = kaggle_tree(tmp_path / "kaggle", result.dataset_dir, TASKS)
    clean_env(monkeypatch)
    env = {"TRM_KAGGLE_INPUT": str(dirs["input"]), "TRM_KAGGLE_WORKING": str(dirs["working"]),
           "TRM_SCRATCH": str(dirs["scratch"]), "TRM_TIME_LIMIT_S": str(BUDGET_S + MARGIN_S),
           # Kaggle's "Save & Run All": the runner makes its smoke run (few tasks, steps and views)
           "KAGGLE_KERNEL_RUN_TYPE": "Batch",
           "CUDA_VISIBLE_DEVICES": "",  # the image's torch here is a CPU build, whatever GPU this machine has
           "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1",
           "HTTP_PROXY": CLOSED, "HTTPS_PROXY": CLOSED, "http_proxy": CLOSED, "https_proxy": CLOSED,
           "NO_PROXY": "", "no_proxy": ""}
    notebook = result.kernel_dir / NOTEBOOK_NAME
    proc = execute_notebook(notebook, python=str(python), env=env, cwd=tmp_path, timeout=BUDGET_S + MARGIN_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "trm-kit installed" in out, out

    # 3. the install took the bundle's wheels and nothing else, and left them importable
    wheel_dir = dirs["bundle"] / "wheels"
    processed = [(tmp_path / p).resolve() for p in re.findall(r"^Processing (\S+\.whl)", out, re.M)]  # cwd-relative
    assert processed and all(p.parent == wheel_dir.resolve() for p in processed), processed
    assert {WheelFile.parse(p).name for p in processed} == set(wheels)
    assert not re.search(r"^\s*Downloading ", out, re.M), out
    probe = ("import json, sys\nfrom importlib import metadata\n"
             "import trm_core, submission, numba, numpy, safetensors, click, torch\n"
             "print(json.dumps({'prefix': sys.prefix, 'files': {m.__name__: m.__file__ for m in "
             "(trm_core, submission, numba, numpy, safetensors, click)}, 'versions': {d: metadata.version(d) "
             f"for d in {sorted(wheels)!r}}}, 'torch': torch.__version__}}))\n")
    seen = run([python, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONNOUSERSITE": "1"})
    assert seen.returncode == 0, seen.stderr
    seen = json.loads(seen.stdout)
    site = Path(seen["prefix"]).resolve()
    assert all(Path(f).resolve().is_relative_to(site) for f in seen["files"].values()), seen["files"]
    assert seen["versions"] == {name: str(w.version) for name, w in wheels.items()}
    assert seen["torch"].startswith("2.13.0"), "the install must keep the image's torch"

    # 4. a valid submission, every test input answered by the model (not only the fallback)
    challenges = json.loads(dirs["challenges"].read_text())
    submission = json.loads((dirs["working"] / "submission.json").read_text())
    assert validate(submission, challenges) == []
    assert list(submission) == list(challenges)
    run_json = dirs["working"] / "trm-run" / "run.json"
    assert run_json.is_file(), f"the runner wrote no {run_json}:\n{out}"
    record = json.loads(run_json.read_text())
    assert record["run_mode"] == "smoke" and record["device"] == "cpu", record.get("run_mode")
    assert record["bundle_problems"] == [], record["bundle_problems"]
    assert record["versions"]["trm_core"] == str(wheels["trm-kit"].version)  # the runner ran the installed wheel
    phases = {p["name"]: p for p in record["phases"]}
    test_inputs = sum(len(t["test"]) for t in challenges.values())
    assert record["tasks"]["used"] == TASKS and record["tasks"]["test_inputs"] == test_inputs, record["tasks"]
    assert phases["calibrate"]["status"] == "ok", record["problems"]
    assert phases["train"]["status"] == "ok" and record["predict"]["tag"] == "adapted", record["problems"]
    assert record["predict"]["from_model"] == test_inputs and record["predict"]["records"] > 0, record["predict"]
    assert record["finished_before_deadline"], record["problems"]
    assert " 0 attempts filled with the fallback" in out, out  # the final cell found nothing to repair
