"""The generated notebook executed for real: `jupyter execute` (nbclient, Jupyter's reference
executor) in an ipykernel `python3` kernel, as Kaggle runs it, rather than by bundle/execute.py.

A bundle is built offline from this checkout (a kit checkpoint, trm-kit's own wheel, a target image
snapshot taken from this environment so that nothing is vendored or downloaded), laid out as Kaggle
mounts it in 2026 (`input/competitions/<slug>/arc-agi_test_challenges.json` with the placeholder
tasks, `input/datasets/<owner>/<slug>/` the bundle, `working/`), and its notebook runs with a short
TRM_TIME_LIMIT_S as a commit run ("Save & Run All": the runner's smoke mode). The kernel is this
environment's interpreter, named `python3` in a kernelspec written to a temporary JUPYTER_PATH, so no
other Python on the machine can answer. trm-kit is already installed here, so the setup cell's
`pip install --no-index` finds it satisfied; the real offline install into a bare image is
tests/test_bundle_e2e.py's (slow) job.

No network: pip's configuration is ignored, every proxy points at a closed port, and where the
platform allows it (Linux with unprivileged user namespaces) the whole run is in a network namespace
of its own with only the loopback interface up, which the kernel's sockets need.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

from submission.cli import report_cmd
from submission.clock import RUNNER_MARGIN_S
from trm_core import __version__
from trm_core.submission_file import validate

try:  # the test extra installs them: a missing one is a broken environment, not a reason to skip
    import ipykernel  # noqa: F401
    import nbclient  # noqa: F401
    import nbformat
except ImportError as e:
    pytest.fail(f"{e.name} is missing: pip install -e '.[test]' (nbclient and ipykernel run the notebook "
                "in a real kernel)", pytrace=False)

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = REPO / "submission" / "placeholder" / "arc-agi_test_challenges.json"
COMPETITION, OWNER, SLUG = "arc-prize-2026-arc-agi-2", "alice", "trm-kit-bundle"
MARGIN_S = RUNNER_MARGIN_S  # the bundle's default runner margin: TRM_TIME_LIMIT_S = margin + the runner's time
BUDGET_S = 300  # the runner's deadline after the notebook starts; a smoke run needs about 90 s on 2 cores
SMOKE_TASKS = 4  # a smoke run predicts the first 4 tasks (RunnerOptions.smoke_tasks)
CLOSED = "http://127.0.0.1:9"  # a proxy nobody listens on: any download attempt fails at once
NETNS = ["unshare", "--map-root-user", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "-"]


def network_off() -> list[str]:
    """The command prefix that runs a command in an empty network namespace, or [] where the
    platform does not allow one (not Linux, no `unshare`/`ip`, user namespaces disabled)."""
    if not (sys.platform.startswith("linux") and shutil.which("unshare") and shutil.which("ip")):
        return []
    probe = subprocess.run(NETNS + ["true"], capture_output=True, timeout=30)
    return NETNS if probe.returncode == 0 else []


def kernel_env(root: Path) -> dict[str, str]:
    """Jupyter's folders under root, with a `python3` kernelspec running this interpreter (what
    `python -m ipykernel install --prefix` writes); JUPYTER_PATH comes before every other
    kernelspec folder, so neither a user's nor the system's python3 can be picked."""
    spec = root / "share" / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (trm-kit test environment)", "language": "python"}))
    return {"JUPYTER_PATH": str(root / "share" / "jupyter"), "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
            "IPYTHONDIR": str(root / "ipython"), "JUPYTER_PLATFORM_DIRS": "1"}


def base_env(tmp: Path, dirs: dict[str, Path]) -> dict[str, str]:
    """This environment without pip settings, Kaggle or trm variables or a PYTHONPATH, plus the
    Kaggle-like folders, the kernelspec and no way to reach an index."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "KAGGLE_", "TRM_", "JUPYTER_"))
           and k not in ("PYTHONPATH", "PYTHONHOME", "IPYTHONDIR")}
    env.update(kernel_env(tmp / "jupyter"))
    env.update({"TRM_KAGGLE_INPUT": str(dirs["input"]), "TRM_KAGGLE_WORKING": str(dirs["working"]),
                "TRM_SCRATCH": str(dirs["scratch"]), "TRM_TIME_LIMIT_S": str(MARGIN_S + BUDGET_S),
                "KAGGLE_KERNEL_RUN_TYPE": "Batch",  # a commit run: the runner's smoke mode
                "CUDA_VISIBLE_DEVICES": "",  # a CPU rehearsal whatever this machine has
                "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1",
                "HTTP_PROXY": CLOSED, "HTTPS_PROXY": CLOSED, "http_proxy": CLOSED, "https_proxy": CLOSED,
                "NO_PROXY": "", "no_proxy": ""})
    return env


def kaggle_tree(root: Path, dataset: Path | None) -> dict[str, Path]:
    """input/competitions/<slug>/ with the placeholder tasks, input/datasets/<owner>/<slug>/ a copy of
    the built dataset folder (none when dataset is None), working/ and scratch/."""
    comp = root / "input" / "competitions" / COMPETITION
    comp.mkdir(parents=True)
    shutil.copy2(PLACEHOLDER, comp / "arc-agi_test_challenges.json")
    (root / "input" / "datasets" / OWNER).mkdir(parents=True)
    if dataset is not None:
        shutil.copytree(dataset, root / "input" / "datasets" / OWNER / SLUG)
    dirs = {"input": root / "input", "bundle": root / "input" / "datasets" / OWNER / SLUG,
            "working": root / "working", "scratch": root / "scratch", "challenges": comp / PLACEHOLDER.name}
    dirs["working"].mkdir()
    dirs["scratch"].mkdir()
    return dirs


def jupyter_execute(notebook: Path, env: dict[str, str], timeout: float,
                    allow_errors: bool = False) -> tuple[int, dict, str]:
    """`jupyter execute --output=executed NOTEBOOK` in this environment, network off where it can be:
    (exit status, the executed notebook, every cell's printed output followed by the command's own).
    `allow_errors`: a cell's error is kept in the executed notebook (which is otherwise not written)."""
    cmd = network_off() + [sys.executable, "-m", "jupyter", "execute", f"--timeout={int(timeout)}",
                           "--output=executed", *(["--allow-errors"] if allow_errors else []), str(notebook)]
    # a session of its own: on a timeout the kernel goes with the command
    proc = subprocess.Popen(cmd, env=env, cwd=notebook.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"jupyter execute ran past {timeout + 60:.0f} s:\n{log[-4000:]}")
    executed = notebook.with_name("executed.ipynb")
    nb = json.loads(executed.read_text()) if executed.is_file() else {"cells": []}
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    return proc.returncode, nb, text + "\n--- jupyter execute ---\n" + log


def assert_every_cell_ran(nb: dict, out: str) -> None:
    nbformat.validate(nbformat.from_dict(nb))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) == 3, out
    assert [c["execution_count"] for c in code] == [1, 2, 3], out
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == [], out
    assert "Traceback" not in out, out  # the cells and the runner end every failure in one line


def assert_failed_loudly(nb: dict, out: str) -> None:
    """A commit run that produced no model answer: every cell ran, the last one printed the banner
    and raised WastedRun after writing the file, so the notebook shows as failed; nothing else raised."""
    nbformat.validate(nbformat.from_dict(nb))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == [1, 2, 3], out
    errors = [(i, o["ename"]) for i, c in enumerate(code) for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == [(2, "WastedRun")], out
    assert "THIS RUN IS NOT WORTH SUBMITTING" in out, out


def assert_valid_submission(working: Path, challenges: dict) -> dict:
    submission = json.loads((working / "submission.json").read_text())
    assert validate(submission, challenges) == []
    assert list(submission) == list(challenges)  # every task id, in the file's order
    for task_id, task in challenges.items():
        assert len(submission[task_id]) == len(task["test"])
        assert all(set(pair) == {"attempt_1", "attempt_2"} for pair in submission[task_id])
    return submission


def strict_json(path: Path) -> object:
    """The file parsed as strict JSON: NaN and Infinity are not JSON, and Kaggle's readers refuse them."""
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def built(tmp_path_factory, micro_checkpoint):
    """A bundle built offline from this checkout: (dataset folder, notebook)."""
    from bundle.build import BundleOptions, build_bundle
    from bundle.notebook import NOTEBOOK_NAME

    try:
        installed = metadata.version("trm-kit")
    except metadata.PackageNotFoundError:
        installed = None
    if installed != __version__:
        pytest.skip(f"trm-kit {__version__} is not installed in this environment (found {installed}): "
                    "pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("bundle")
    # the image is this environment: everything trm-kit needs is there, so no wheel is downloaded
    freeze = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert freeze.returncode == 0, freeze.stderr
    image = root / "image-freeze.txt"
    image.write_text(f"# python-version: {sys.version_info[0]}.{sys.version_info[1]}\n{freeze.stdout}")
    # built for the machine it is rehearsed on: a bundle for 4 L4s on a CPU is a run the last cell
    # calls wasted, and raises for (tests/test_notebook_loud.py)
    result = build_bundle(BundleOptions(checkpoint=str(micro_checkpoint), out=root / "out", target=str(image),
                                        owner=OWNER, slug=SLUG, competition=COMPETITION, accelerator="none"))
    assert result.manifest["vendored"] == [], result.manifest["vendored"]
    return result.dataset_dir, result.kernel_dir / NOTEBOOK_NAME


def test_notebook_answers_with_the_model_in_a_real_kernel(tmp_path, built):
    dataset, notebook = built
    dirs = kaggle_tree(tmp_path / "kaggle", dataset)
    nb_path = shutil.copy2(notebook, tmp_path / notebook.name)
    rc, nb, out = jupyter_execute(Path(nb_path), base_env(tmp_path, dirs), timeout=BUDGET_S + 120)
    assert rc == 0, out
    assert_every_cell_ran(nb, out)
    # the kernel is this environment's interpreter: the setup cell runs pip with sys.executable
    assert f"running: {sys.executable} -m pip install --no-index" in out, out
    assert "trm-kit installed" in out and "[trm final]" in out, out

    challenges = json.loads(PLACEHOLDER.read_text())
    submission = assert_valid_submission(dirs["working"], challenges)
    record = strict_json(dirs["working"] / "trm-run" / "run.json")
    assert record["run_mode"] == "smoke" and record["device"] == "cpu", (record.get("run_mode"), out)
    assert record["environment"]["kind"] == "commit", record["environment"]
    assert record["bundle_problems"] == [], record["bundle_problems"]
    strict_json(dirs["working"] / "trm-run" / "plan.json")
    # the smoke run's tasks are answered by the model within the time given; the rest keep the fallback
    smoke = list(challenges)[:SMOKE_TASKS]
    answered = sum(len(challenges[t]["test"]) for t in smoke)
    assert record["tasks"]["used"] == SMOKE_TASKS, (record["tasks"], record["problems"])
    assert record["predict"]["from_model"] == answered, (record["predict"], record["problems"])
    assert record["finished_before_deadline"], record["problems"]
    later = list(challenges)[SMOKE_TASKS:]
    assert all(p == {"attempt_1": t["input"], "attempt_2": t["input"]}
               for tid in later for p, t in zip(submission[tid], challenges[tid]["test"])), "fallback changed"
    # the output folder, as a competitor downloads it, is one `trm report` draws: timings, the
    # training curve and every task
    page = tmp_path / "report.html"
    result = CliRunner().invoke(report_cmd, [str(dirs["working"]), "-o", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    for section in ('id="summary"', 'id="timing"', 'id="training"', 'id="tasks"'):
        assert section in html, section
    assert all(f'data-task="{task_id}"' in html for task_id in challenges)


def test_a_changed_wheel_installs_nothing_and_still_leaves_a_valid_file(tmp_path, built):
    """In a real kernel too, a wheel that differs from the manifest stops the install before pip
    runs, the refusal is recorded in trm-run/setup.json, and the last cell writes the fallback, then
    fails the commit run loudly."""
    dataset, notebook = built
    dirs = kaggle_tree(tmp_path / "kaggle", dataset)
    wheel = next((dirs["bundle"] / "wheels").glob("trm_kit-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    nb_path = shutil.copy2(notebook, tmp_path / notebook.name)
    _, nb, out = jupyter_execute(Path(nb_path), base_env(tmp_path, dirs), timeout=120, allow_errors=True)
    assert_failed_loudly(nb, out)
    assert "-m pip install" not in out and "not starting the runner" in out, out
    setup = strict_json(dirs["working"] / "trm-run" / "setup.json")
    assert setup["ok"] is False and any(wheel.name in p and "sha256" in p for p in setup["problems"]), setup
    challenges = json.loads(PLACEHOLDER.read_text())
    submission = assert_valid_submission(dirs["working"], challenges)
    assert all(p["attempt_1"] == t["input"] for tid in challenges
               for p, t in zip(submission[tid], challenges[tid]["test"]))


def test_without_the_bundle_attached_the_kernel_still_leaves_a_valid_file(tmp_path, built):
    _, notebook = built
    dirs = kaggle_tree(tmp_path / "kaggle", None)
    nb_path = shutil.copy2(notebook, tmp_path / notebook.name)
    _, nb, out = jupyter_execute(Path(nb_path), base_env(tmp_path, dirs), timeout=120, allow_errors=True)
    assert_failed_loudly(nb, out)
    assert "no trm-bundle.json" in out and "not starting the runner" in out, out
    assert_valid_submission(dirs["working"], json.loads(PLACEHOLDER.read_text()))
