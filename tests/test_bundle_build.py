"""bundle.build and `trm bundle`: a whole build from local inputs only (a slim kit checkpoint, a
local wheels folder), its layout, manifest, metadata, size report, and the --push dry run."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundle import BundleError
from bundle.build import BundleOptions, build_bundle
from bundle.manifest import MARKER_NAME, verify_bundle
from bundle.metadata import validate_dataset_metadata, validate_kernel_metadata
from bundle.notebook import code_cells
from bundle.publish import find_credentials
from trm_cli import main

REPO = Path(__file__).resolve().parent.parent


def slim_kit(folder: Path) -> Path:
    """A real slim checkpoint (the build loads what it ships): the demo's."""
    shutil.copytree(REPO / "pretrained" / "demo", folder)
    return folder


def tiny_wheel(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


@pytest.fixture(scope="module")
def own_wheel(tmp_path_factory):
    from bundle.wheels import build_own_wheel

    return build_own_wheel(REPO, tmp_path_factory.mktemp("own"))


def test_build_from_local_inputs(tmp_path, own_wheel):
    image = tmp_path / "image.txt"  # an image without click: click must be vendored from --wheels-dir
    image.write_text("# python-version: 3.11\ntorch==2.6.0+cu124\nnumpy==2.0.2\nnumba==0.60.0\nsafetensors==0.5.3\n")
    wheels = tmp_path / "wheels-src"
    tiny_wheel(wheels, "click", "8.1.7")
    logs = []
    result = build_bundle(BundleOptions(checkpoint=str(slim_kit(tmp_path / "kit")), out=tmp_path / "out",
                                        target=str(image), wheels_dir=wheels, own_wheel=own_wheel, owner="alice",
                                        slug="trm-demo-bundle", competition="arc-prize-2025"), log=logs.append)
    ds, kernel = result.dataset_dir, result.kernel_dir
    assert sorted(p.name for p in (ds / "wheels").iterdir()) == ["click-8.1.7-py3-none-any.whl", own_wheel.name]
    assert sorted(p.name for p in (ds / "checkpoint").iterdir()) == ["manifest.json", "model.safetensors"]
    assert verify_bundle(ds) == [] and find_credentials(ds) == [] and find_credentials(kernel) == []
    manifest = json.loads((ds / MARKER_NAME).read_text())
    assert manifest["vendored"] == ["click"] and manifest["python_tag"] == "cp311"
    assert manifest["trm_kit_version"] == own_wheel.name.split("-")[1]
    dmeta = json.loads((ds / "dataset-metadata.json").read_text())
    kmeta = json.loads((kernel / "kernel-metadata.json").read_text())
    assert validate_dataset_metadata(dmeta) == [] and validate_kernel_metadata(kmeta, kernel) == []
    assert kmeta["dataset_sources"] == ["alice/trm-demo-bundle"] and kmeta["id"] == "alice/trm-demo-bundle-submit"
    nb = json.loads((kernel / kmeta["code_file"]).read_text())
    assert f"BUNDLE_ID = {manifest['bundle_id']!r}" in code_cells(nb)[0]
    # the run and final cells answer the challenges in the folder of the competition built for
    assert manifest["competition"] == "arc-prize-2025" and kmeta["competition_sources"] == ["arc-prize-2025"]
    assert all("COMPETITION = 'arc-prize-2025'" in cell for cell in code_cells(nb)[1:])
    report = "\n".join(result.size_report())
    assert "checkpoint before slimming" in report and "slim ratio" in report and own_wheel.name in report
    assert result.sizes["dataset"] == sum(p.stat().st_size for p in ds.rglob("*") if p.is_file())
    assert any("click>=8.0: vendor" in line for line in logs)

    # building again into the same folder replaces the earlier bundle; a foreign folder is refused
    build_bundle(BundleOptions(checkpoint=str(tmp_path / "kit"), out=tmp_path / "out", target=str(image),
                               wheels_dir=wheels, own_wheel=own_wheel, owner="alice", slug="trm-demo-bundle"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        build_bundle(BundleOptions(checkpoint=str(tmp_path / "kit"), out=tmp_path / "other", own_wheel=own_wheel))


def test_bad_metadata_fails_before_any_work(tmp_path):
    with pytest.raises(BundleError, match="has 3 characters"):
        build_bundle(BundleOptions(checkpoint="unused", out=tmp_path / "out", owner="alice", slug="abc"))
    assert not (tmp_path / "out").exists()


def test_trm_bundle_cli_builds_and_dry_runs_push(tmp_path, own_wheel):
    kit = slim_kit(tmp_path / "kit")
    env = {"HOME": str(tmp_path / "home"), "KAGGLE_CONFIG_DIR": str(tmp_path / "no-kaggle"),
           "KAGGLE_API_TOKEN": None, "KAGGLE_USERNAME": None, "KAGGLE_KEY": None}
    result = CliRunner().invoke(main, ["bundle", "--checkpoint", str(kit), "--out", str(tmp_path / "out"),
                                       "--own-wheel", str(own_wheel), "--owner", "alice", "--push"], env=env)
    assert result.exit_code == 0, result.output
    assert "for kaggle-2026" in result.output and "dataset total" in result.output
    assert "kaggle kernels push -p" in result.output and "kaggle competitions submit -c arc-prize-2026-arc-agi-2" in result.output
    assert (tmp_path / "out" / "dataset" / MARKER_NAME).is_file()
    bad = CliRunner().invoke(main, ["bundle", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"),
                                    "--owner", "alice"], env=env)
    assert bad.exit_code == 1 and "is not a file, a kit directory" in bad.output and "Traceback" not in bad.output
