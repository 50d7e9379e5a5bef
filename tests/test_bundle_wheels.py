"""bundle.image and bundle.wheels: target snapshots, what gets vendored, wheels from a local folder,
the pip download command and its offline error, and trm-kit's own wheel."""

import subprocess
import zipfile
from pathlib import Path

import pytest

from bundle import BundleError
from bundle.image import TARGETS, get_target, manylinux_platforms, read_constraints
from bundle.versions import parse_requirement
from bundle.wheels import (NEVER_VENDOR, WheelFile, build_own_wheel, download_command, fetch_wheels,
                           find_local_wheel, plan_wheels, project_requirements, wheel_requirements)

REPO = Path(__file__).resolve().parent.parent


def make_wheel(folder: Path, name: str, version: str, tags: str = "py3-none-any", requires=()) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD, one module)."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tags}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        zf.writestr(f"{dist}.dist-info/METADATA", meta)
        zf.writestr(f"{dist}.dist-info/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tags}\n")
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture()
def snapshot(tmp_path):
    path = tmp_path / "image.txt"
    path.write_text("# a test image\n# python-version: 3.12\n"
                    "torch==2.10.0+cu128\nnumpy==2.4.6\nclick==7.1.2  # too old for click>=8\nsafetensors==0.7.0\n")
    return get_target(path)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_shipped_snapshots_parse_and_hold_the_runtime_stack(name):
    target = TARGETS[name]
    installed = target.installed()
    assert len(installed) > 500, f"{target.constraints_file} looks truncated"
    for key in ("torch", "numpy", "numba", "llvmlite", "safetensors", "click", "huggingface-hub"):
        assert key in installed, f"{key} missing from {target.constraints_file}"
    assert target.constraints_file.read_text().startswith("# Installed packages of the Kaggle")
    assert f"# python-version: {target.python_version}" in target.constraints_file.read_text()
    assert installed["torch"].local and installed["torch"].local[0].startswith("cu")


def test_real_requirements_are_all_on_the_default_image():
    decisions = plan_wheels(project_requirements(REPO), get_target("kaggle-2026"))
    assert {d.requirement.key for d in decisions} >= {"torch", "numpy", "numba", "safetensors", "click"}
    assert all(d.action == "image" for d in decisions), [(d.requirement, d.reason) for d in decisions]


def test_platform_tags_are_explicit_and_complete():
    tags = manylinux_platforms(35)
    assert tags[0] == "manylinux_2_35_x86_64" and tags[-1] == "manylinux1_x86_64"
    for t in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"):
        assert t in tags
    target = get_target("kaggle-2026")
    assert target.python_tag == "cp312"
    assert target.accepts_wheel_tags("cp312", "cp312", "manylinux_2_17_x86_64.manylinux2014_x86_64")
    assert target.accepts_wheel_tags("cp39", "abi3", "manylinux_2_28_x86_64")
    assert target.accepts_wheel_tags("py2.py3", "none", "any")
    assert not target.accepts_wheel_tags("cp311", "cp311", "manylinux_2_17_x86_64")
    assert not target.accepts_wheel_tags("cp312", "cp312", "manylinux_2_39_x86_64")
    assert not target.accepts_wheel_tags("cp312", "cp312", "win_amd64")


def test_plan_skips_satisfied_vendors_missing_and_never_vendors_torch(snapshot):
    decisions = plan_wheels(["torch>=2.1", "numpy>=1.24", "click>=8.0", "numba>=0.59",
                             "tomli>=1; python_version < '3.11'"], snapshot)
    by = {d.requirement.key: d for d in decisions}
    assert "tomli" not in by  # marker false on Python 3.12
    assert by["torch"].action == "image" and by["numpy"].action == "image"
    assert by["click"].action == "vendor" and "7.1.2" in by["click"].reason
    assert by["numba"].action == "vendor" and "does not have" in by["numba"].reason
    with pytest.raises(BundleError, match="never vendored"):
        plan_wheels(["torch>=3.0"], snapshot)
    assert "torch" in NEVER_VENDOR


def test_fetch_from_wheels_dir_follows_dependencies(tmp_path, snapshot):
    src = tmp_path / "wheels-src"
    src.mkdir()
    make_wheel(src, "click", "8.1.0", requires=["colorama; platform_system == 'Windows'"])
    make_wheel(src, "click", "8.2.0rc1")  # a pre-release loses to a final release
    make_wheel(src, "click", "9.0.0", tags="cp311-cp311-manylinux_2_17_x86_64")  # wrong Python tag
    make_wheel(src, "numba", "0.65.1", tags="cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64",
               requires=["llvmlite<0.48,>=0.47.0dev0", "numpy<2.5,>=1.24"])
    make_wheel(src, "llvmlite", "0.47.0", tags="cp312-cp312-manylinux_2_17_x86_64")
    decisions = plan_wheels(["click>=8.0", "numba>=0.59", "numpy>=1.24"], snapshot)
    got = fetch_wheels(decisions, snapshot, tmp_path / "out", wheels_dir=src)
    names = sorted(w.path.name for w in got)
    assert names == ["click-8.1.0-py3-none-any.whl", "llvmlite-0.47.0-cp312-cp312-manylinux_2_17_x86_64.whl",
                     "numba-0.65.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    assert [str(r) for r in wheel_requirements(src / names[2])] == ["llvmlite<0.48,>=0.47.0dev0", "numpy<2.5,>=1.24"]


def test_a_capped_dependency_is_fetched_again_within_the_cap(tmp_path):
    # one package at a time: the newest numpy (2.6) exceeds numba's cap (<2.5), so numpy is fetched again
    image = tmp_path / "image.txt"
    image.write_text("# python-version: 3.12\ntorch==2.10.0\n")
    target = get_target(image)
    src = tmp_path / "wheels-src"
    src.mkdir()
    make_wheel(src, "numba", "0.65.1", tags="cp312-cp312-manylinux2014_x86_64", requires=["numpy<2.5,>=1.24"])
    for version in ("2.4.6", "2.6.0"):
        make_wheel(src, "numpy", version, tags="cp312-cp312-manylinux2014_x86_64")
    log: list[str] = []
    got = fetch_wheels(plan_wheels(["numba>=0.59", "numpy>=1.24"], target), target, tmp_path / "out",
                       wheels_dir=src, log=log.append)
    assert sorted((w.name, str(w.version)) for w in got) == [("numba", "0.65.1"), ("numpy", "2.4.6")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(w.path.name for w in got)
    assert any("fetching numpy>=1.24,<2.5" in line for line in log)
    # when no wheel satisfies both, the error names what is missing
    (src / "numpy-2.4.6-cp312-cp312-manylinux2014_x86_64.whl").unlink()
    with pytest.raises(BundleError, match="numpy>=1.24,<2.5"):
        fetch_wheels(plan_wheels(["numba>=0.59", "numpy>=1.24"], target), target, tmp_path / "out2", wheels_dir=src)


def test_a_dependency_never_replaces_an_image_package(tmp_path, snapshot):
    src = tmp_path / "wheels-src"
    src.mkdir()
    make_wheel(src, "numba", "0.60.0", tags="cp312-cp312-manylinux2014_x86_64", requires=["numpy<2.1,>=1.22"])
    with pytest.raises(BundleError, match="has numpy 2.4.6, which the bundle will not replace"):
        fetch_wheels(plan_wheels(["numba>=0.59"], snapshot), snapshot, tmp_path / "out", wheels_dir=src)


def test_missing_wheel_error_names_the_package_and_the_command(tmp_path, snapshot):
    src = tmp_path / "empty"
    src.mkdir()
    decisions = plan_wheels(["numba>=0.59"], snapshot)
    with pytest.raises(BundleError) as err:
        fetch_wheels(decisions, snapshot, tmp_path / "out", wheels_dir=src)
    msg = str(err.value)
    assert "numba>=0.59" in msg and "pip download --only-binary=:all: --no-deps" in msg
    assert "--platform manylinux2014_x86_64" in msg and "--abi cp312" in msg and "--wheels-dir" in msg


def test_pip_download_failure_is_explained(tmp_path, snapshot):
    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies numba")

    with pytest.raises(BundleError, match="On a machine with network"):
        fetch_wheels(plan_wheels(["numba>=0.59"], snapshot), snapshot, tmp_path / "out", run=offline)


def test_download_command_is_one_binary_only_call_with_every_tag(tmp_path, snapshot):
    cmd = download_command([parse_requirement("numba>=0.59"), parse_requirement("click>=8")], snapshot, tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--implementation") + 1] == "cp"
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert platforms == list(snapshot.platforms)
    assert cmd[-2:] == ["numba>=0.59", "click>=8"]


def test_custom_snapshot_needs_a_python_header(tmp_path):
    bad = tmp_path / "freeze.txt"
    bad.write_text("torch==2.1\n")
    with pytest.raises(ValueError, match="python-version"):
        get_target(bad)
    with pytest.raises(ValueError, match="kaggle-2026"):
        get_target("kaggle-1999")
    bad.write_text("# python-version: 3.12\ntorch>=2.1\n")
    with pytest.raises(ValueError, match="freeze.txt:2"):
        read_constraints(bad)


def test_local_wheel_choice_ignores_unparseable_names(tmp_path, snapshot):
    (tmp_path / "not-a-wheel.whl").write_text("x")
    make_wheel(tmp_path, "click", "8.3.0")
    wheel = find_local_wheel(parse_requirement("click>=8"), snapshot, tmp_path)
    assert wheel is not None and str(wheel.version) == "8.3.0"
    with pytest.raises(BundleError, match="not a wheel file name"):
        WheelFile.parse(tmp_path / "not-a-wheel.whl")


def test_own_wheel_builds_from_a_clean_copy(tmp_path):
    wheel = build_own_wheel(REPO, tmp_path)
    assert wheel.name.startswith("trm_kit-") and wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "bundle/cell_finalize.py" in names and "bundle/constraints-kaggle-2026.txt" in names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    reqs = {r.key for r in wheel_requirements(wheel)}
    assert {"torch", "numpy", "numba", "safetensors", "click"} <= reqs


def test_local_settings_files_in_a_package_folder_stay_out_of_the_own_wheel(tmp_path):
    import shutil

    from bundle.publish import find_credentials

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, checkout / name)
    for pkg in ("trm_core", "trm_lab", "submission", "bundle", "trm_cli"):
        shutil.copytree(REPO / pkg, checkout / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    stray = {"bundle/kaggle.json": '{"username": "alice", "key": "0123456789abcdef0123456789abcdef"}',
             "bundle/settings.local.json": '{"KAGGLE_KEY": "0123456789abcdef0123456789abcdef"}',
             "bundle/notes.txt": "KAGGLE_KEY=0123456789abcdef0123456789abcdef",
             "submission/placeholder/local.json": '{"WANDB_API_KEY": "' + "a1b2c3d4e5" * 4 + '"}'}
    for rel, body in stray.items():
        (checkout / rel).write_text(body)
    wheel = build_own_wheel(checkout, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        data = sorted(n for n in zf.namelist() if not n.endswith(".py") and ".dist-info/" not in n)
    # exactly the data files the code reads: every target image's snapshot, the placeholder task set
    assert data == sorted({f"bundle/{t.constraints_file.name}" for t in TARGETS.values()} |
                          {f"submission/placeholder/{p.name}" for p in (REPO / "submission" / "placeholder").iterdir()})
    assert find_credentials(tmp_path / "dist", env={}) == []
