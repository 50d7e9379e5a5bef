"""`trm bundle` configures the Kaggle run: --run-option (checked against the runner's options),
--accelerator (kernel-metadata's machine), --image-pin (docker_image_pinning_type); all recorded in
the manifest and the notebook. Also: the manifest's `vendored` lists the dependencies fetched for a
vendored package (numba's llvmlite). Builds use local inputs only."""

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle.manifest import MARKER_NAME
from bundle.metadata import kernel_metadata, validate_kernel_metadata
from bundle.notebook import NotebookSettings, build_notebook, code_cells
from bundle.run_config import RunConfigError, run_config
from submission.options import options_from_args
from trm_cli import main

REPO = Path(__file__).resolve().parent.parent
ENV = {"KAGGLE_API_TOKEN": None, "KAGGLE_USERNAME": None, "KAGGLE_KEY": None, "SOURCE_DATE_EPOCH": None}


@pytest.fixture(scope="module")
def own_wheel(tmp_path_factory):
    from bundle.wheels import build_own_wheel

    return build_own_wheel(REPO, tmp_path_factory.mktemp("own"))


def settings_value(cell: str, name: str):
    """The literal a generated cell's settings block assigns to `name`."""
    import ast

    line = next(line for line in cell.splitlines() if line.startswith(f"{name} = "))
    return ast.literal_eval(line.split(" = ", 1)[1])


def test_run_options_accelerator_and_pin_reach_metadata_manifest_and_notebook(tmp_path, own_wheel):
    shutil.copytree(REPO / "pretrained" / "demo", tmp_path / "kit")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "bundle", "--checkpoint", str(tmp_path / "kit"), "--out", str(out), "--own-wheel", str(own_wheel),
        "--owner", "alice", "--accelerator", "t4x2", "--image-pin", "original",
        "--run-option", "train_mode=full", "--run-option", "--views-target=64", "--run-option", "seed=7",
        "--run-option", "lr=1e-4", "--run-option", "baseline=true", "--run-option", "max-steps=0"],
        env=dict(ENV, HOME=str(tmp_path / "home")))
    assert result.exit_code == 0, result.output
    assert "run on t4x2 (NvidiaTeslaT4), image pin original" in result.output
    kmeta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert kmeta["machine_shape"] == "NvidiaTeslaT4" and kmeta["enable_gpu"] is True
    assert kmeta["docker_image_pinning_type"] == "original"
    assert validate_kernel_metadata(kmeta, out / "kernel") == []
    manifest = json.loads((out / "dataset" / MARKER_NAME).read_text())
    assert manifest["run"] == {"options": {"train_mode": "full", "lr": 0.0001, "views_target": 64, "max_steps": 0,
                                           "baseline": True, "seed": 7},
                               "accelerator": "t4x2", "machine_shape": "NvidiaTeslaT4", "expected_gpus": 2,
                               "image_pin": "original"}
    nb = json.loads((out / "kernel" / kmeta["code_file"]).read_text())
    setup, run, _ = code_cells(nb)
    assert settings_value(setup, "ACCELERATOR") == "t4x2" and settings_value(setup, "EXPECTED_GPUS") == 2
    assert settings_value(setup, "RUN_CONFIG") == manifest["run"]
    # the run cell's EXTRA_ARGS are flags the runner itself parses back to the chosen values
    extra = settings_value(run, "EXTRA_ARGS")
    opts = options_from_args(extra)
    assert (opts.train_mode, opts.views_target, opts.seed, opts.lr, opts.baseline, opts.max_steps) == \
        ("full", 64, 7, 1e-4, True, 0)
    intro = "".join(nb["cells"][0]["source"])
    assert "**Run configuration**" in intro and "`t4x2`" in intro and "`--seed=7`" in intro and "`original`" in intro
    # first lines: the run configuration is stated before the cell-by-cell description
    assert intro.index("Run configuration") < intro.index("1. **Setup**")


def test_defaults_are_the_4xl4_machine_no_pin_and_the_runners_defaults(tmp_path):
    (tmp_path / "nb.ipynb").write_text("{}")
    meta = kernel_metadata("alice", "trm-kit-submit", "nb.ipynb", "alice/trm-kit-bundle")
    assert meta["machine_shape"] == "NvidiaL4" and "docker_image_pinning_type" not in meta
    cfg = run_config()
    assert cfg.runner_args() == [] and cfg.to_json()["expected_gpus"] == 4
    nb = build_notebook(NotebookSettings("0123456789abcdef", "0.1.0", run=cfg))
    setup, run, _ = code_cells(nb)
    assert settings_value(run, "EXTRA_ARGS") == [] and settings_value(setup, "ACCELERATOR") == "l4x4"
    assert settings_value(setup, "EXPECTED_GPUS") == 4
    assert "none (the runner's defaults)" in "".join(nb["cells"][0]["source"])
    # a notebook made outside `trm bundle` (the local dry run, tests) claims no machine: no GPU check
    bare = build_notebook(NotebookSettings("0123456789abcdef", "0.1.0"))
    setup, run, _ = code_cells(bare)
    assert settings_value(setup, "ACCELERATOR") == "" and settings_value(setup, "EXPECTED_GPUS") == 0
    assert settings_value(run, "EXTRA_ARGS") == [] and "no accelerator checked" in "".join(bare["cells"][0]["source"])


def test_no_accelerator_is_a_cpu_notebook(tmp_path):
    (tmp_path / "nb.ipynb").write_text("{}")
    meta = kernel_metadata("alice", "trm-kit-submit", "nb.ipynb", "alice/trm-kit-bundle", accelerator="none",
                           image_pin="latest")
    assert meta["enable_gpu"] is False and "machine_shape" not in meta
    assert meta["docker_image_pinning_type"] == "latest"
    assert validate_kernel_metadata(meta, tmp_path) == []
    assert run_config(accelerator="none").to_json()["expected_gpus"] == 0


@pytest.mark.parametrize("field,value,fragment", [
    ("docker_image_pinning_type", "sometimes", "docker_image_pinning_type 'sometimes'"),
    ("enable_gpu", "yes", "enable_gpu 'yes'"),
])
def test_bad_pin_and_gpu_flag_are_named(tmp_path, field, value, fragment):
    (tmp_path / "nb.ipynb").write_text("{}")
    meta = kernel_metadata("alice", "trm-kit-submit", "nb.ipynb", "alice/trm-kit-bundle")
    meta[field] = value
    assert any(fragment in p for p in validate_kernel_metadata(meta, tmp_path))


def test_gpu_shape_with_the_gpu_off_is_refused(tmp_path):
    (tmp_path / "nb.ipynb").write_text("{}")
    meta = kernel_metadata("alice", "trm-kit-submit", "nb.ipynb", "alice/trm-kit-bundle")
    meta["enable_gpu"] = False
    assert any("with enable_gpu false" in p for p in validate_kernel_metadata(meta, tmp_path))


@pytest.mark.parametrize("args,fragment", [
    (["--run-option", "learning_rate=1"], "'learning_rate': not a runner option; known: baseline, cpu_procs"),
    (["--run-option", "lr=-1"], "--lr: must be > 0, got -1.0"),
    (["--run-option", "lr=nan"], "--lr: must be a finite number"),
    (["--run-option", "max_epochs=inf"], "--max-epochs: must be a finite number"),
    (["--run-option", "seed=4294967296"], "--seed: must be in 0..4294967295"),
    (["--run-option", "seed=" + "9" * 150], "--seed: must be in 0..4294967295"),
    (["--run-option", "seed=1e3"], "--seed: invalid int value"),
    (["--run-option", "seed=" + "9" * 300], "305 characters"),
    (["--run-option", "views_min=600"], "--views-min (600) <= --views-target (256)"),
    (["--run-option", "train_mode=pretrain"], "invalid choice: 'pretrain'"),
    (["--run-option", "baseline=maybe"], "baseline: true or false, got 'maybe'"),
    (["--run-option", "seed"], "expected KEY=VALUE"),
    (["--run-option", "=3"], "'': not a runner option"),
    (["--run-option", "seed=1", "--run-option", "seed=2"], "given twice"),
    (["--run-option", "deadline=1e9"], "deadline: not settable here"),
    (["--run-option", "working-dir=/tmp"], "not settable here"),
    (["--run-option", "time-limit=3600"], "not settable here"),
    (["--run-option", "gpus=4", "--accelerator", "t4x2"], "--accelerator t4x2 has 2 GPUs"),
    (["--run-option", "device=cuda", "--accelerator", "none"], "that machine has no GPU"),
    (["--accelerator", "p100"], "Kaggle retired the P100"),
    (["--accelerator", "NvidiaL4x4"], "Invalid value for '--accelerator'"),
    (["--image-pin", "newest"], "Invalid value for '--image-pin'"),
])
def test_bad_run_configuration_is_refused_before_any_work(tmp_path, args, fragment):
    result = CliRunner().invoke(main, ["bundle", "--checkpoint", str(tmp_path / "unused"), "--out",
                                       str(tmp_path / "out"), "--owner", "alice"] + args,
                                env=dict(ENV, HOME=str(tmp_path / "home")))
    assert result.exit_code != 0 and fragment in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    assert len(result.output) < 2000  # one message, no 300-digit echo


def test_run_option_keys_match_the_runner_flags():
    # every spelling docs/bundle.md shows resolves to the same field
    for key in ("views_target", "views-target", "--views-target"):
        assert run_config([f"{key}=128"]).to_json()["options"] == {"views_target": 128}
    assert run_config(["provisional-every=30"]).runner_args() == ["--provisional-every=30.0"]
    assert run_config(["baseline=false"]).runner_args() == []
    with pytest.raises(RunConfigError, match="not a runner option"):
        run_config(["train-mode\x00=full"])


def test_vendored_lists_the_dependencies_of_a_vendored_package(tmp_path, own_wheel):
    """An image without numba: numba is vendored and so is llvmlite, which numba needs; the manifest
    listed numba only."""
    from bundle.build import BundleOptions, build_bundle

    image = tmp_path / "image.txt"
    image.write_text("# python-version: 3.11\ntorch==2.6.0+cu124\nnumpy==2.0.2\nsafetensors==0.5.3\nclick==8.1.7\n")
    wheels = tmp_path / "wheels-src"
    wheels.mkdir()
    for name, version, requires in (("numba", "0.60.0", "llvmlite<0.44,>=0.43.0dev0\nRequires-Dist: numpy>=1.22"),
                                    ("llvmlite", "0.43.0", "")):
        with zipfile.ZipFile(wheels / f"{name}-{version}-cp311-cp311-manylinux2014_x86_64.whl", "w") as zf:
            zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                        f"Version: {version}\n" + (f"Requires-Dist: {requires}\n" if requires else ""))
    shutil.copytree(REPO / "pretrained" / "demo", tmp_path / "kit")
    result = build_bundle(BundleOptions(checkpoint=str(tmp_path / "kit"), out=tmp_path / "out", target=str(image),
                                        wheels_dir=wheels, own_wheel=own_wheel, owner="alice"))
    manifest = json.loads((result.dataset_dir / MARKER_NAME).read_text())
    assert manifest["vendored"] == ["llvmlite", "numba"]
    shipped = sorted(re.sub(r"-.*", "", p.name) for p in (result.dataset_dir / "wheels").iterdir())
    assert shipped == ["llvmlite", "numba", "trm_kit"]


def test_the_dry_run_takes_runner_options_as_trm_bundle_does() -> None:
    from click.testing import CliRunner

    from bundle.cli import dry_run_cmd
    from bundle.run_config import RunConfigError, runner_flags

    assert runner_flags(["spend=per-task", "fit_every=10", "baseline=false"]) == ("--spend=per-task",
                                                                                  "--fit-every=10")
    assert runner_flags(["baseline=true"]) == ("--baseline",)
    with pytest.raises(RunConfigError, match="spend"):
        runner_flags(["spend=sometimes"])
    res = CliRunner().invoke(dry_run_cmd, ["--run-option", "spend=sometimes", "--budget", "60"])
    assert res.exit_code != 0 and "spend" in res.output and "Traceback" not in res.output
