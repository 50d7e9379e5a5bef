"""Reproducible bundles: the same checkout, checkpoint, target and options give byte-identical files
and the same bundle id, so a notebook pushed from one build accepts the dataset of a rebuild.
Builds use local inputs only: the own wheel is built from this checkout each time, and the
checkpoint is a full kit checkpoint the build converts (slims) each time."""

import json
import time
import zipfile
from pathlib import Path

import pytest

from bundle.build import BundleOptions, build_bundle
from bundle.manifest import FIXED_EPOCH, MARKER_NAME, EpochError, build_epoch, write_manifest
from bundle.wheels import normalize_wheel

REPO = Path(__file__).resolve().parent.parent


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def full_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from trm_core import checkpoint
    from trm_core.model import TRM, TRMConfig

    torch.manual_seed(0)
    cfg = TRMConfig.from_name("tiny").with_(num_puzzle_identifiers=40)
    return checkpoint.save(checkpoint.from_model(TRM(cfg)), tmp_path / "full")


def test_building_twice_gives_the_same_bytes_and_bundle_id(tmp_path, full_checkpoint, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    image = tmp_path / "image.txt"  # everything installed: only trm-kit's own wheel ships
    image.write_text("# python-version: 3.11\ntorch==2.6.0+cu124\nnumpy==2.0.2\nnumba==0.60.0\nsafetensors==0.5.3\n"
                     "click==8.1.7\n")
    builds = []
    for name in ("first", "second"):
        if builds:
            time.sleep(2.1)  # past zip's 2-second clock and the conversion's 1-second one
        result = build_bundle(BundleOptions(
            checkpoint=str(full_checkpoint), out=tmp_path / name, target=str(image), owner="alice",
            run_options=("seed=3", "views_target=128"), accelerator="t4x2", image_pin="latest"))
        builds.append(result)
    first, second = (files_of(b.out) for b in builds)
    assert sorted(first) == sorted(second)
    assert any(p.startswith("dataset/wheels/trm_kit-") for p in first)
    assert "converted_at" in first["dataset/checkpoint/manifest.json"].decode()  # the build did convert
    differ = [p for p in first if first[p] != second[p] and not p.endswith(MARKER_NAME)]
    assert differ == []
    assert builds[0].manifest["bundle_id"] == builds[1].manifest["bundle_id"]
    # the manifest (not hashed into the id) may differ only by its creation time
    manifests = [json.loads(f[f"dataset/{MARKER_NAME}"]) for f in (first, second)]
    for m in manifests:
        m.pop("created_at")
    assert manifests[0] == manifests[1]


def test_the_own_wheel_is_a_deterministic_archive(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:  # the order and times a build happens to give
        for name, mode in (("demo-1.0.dist-info/RECORD", 0o600), ("demo/b.py", 0o664), ("demo/a.py", 0o775),
                           ("demo-1.0.dist-info/METADATA", 0o600)):
            info = zipfile.ZipInfo(name, time.gmtime(time.time())[:6])
            info.external_attr = mode << 16
            zf.writestr(info, name.encode())
    normalize_wheel(wheel, FIXED_EPOCH)
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["demo/a.py", "demo/b.py", "demo-1.0.dist-info/METADATA",
                                               "demo-1.0.dist-info/RECORD"]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert [(i.external_attr >> 16) & 0o777 for i in infos] == [0o755, 0o644, 0o644, 0o644]
        assert all(zf.read(i) == i.filename.encode() for i in infos)


def test_source_date_epoch_sets_the_manifest_time_and_is_checked(tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f.txt").write_text("x")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = (write_manifest(tmp_path / "b", trm_version="0.1.0", target="t", python_tag="cp312"),
         (tmp_path / "b" / MARKER_NAME).read_bytes())
    b = (write_manifest(tmp_path / "b", trm_version="0.1.0", target="t", python_tag="cp312"),
         (tmp_path / "b" / MARKER_NAME).read_bytes())
    assert a[1] == b[1] and a[0]["created_at"] == "2023-11-14T22:13:20+00:00"
    assert build_epoch() == 1700000000
    for bad in ("yesterday", "-5", "12", "1e9", "9" * 40):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(EpochError, match="SOURCE_DATE_EPOCH"):
            build_epoch()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert build_epoch() == FIXED_EPOCH


def test_a_bad_source_date_epoch_fails_the_build_cleanly(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from trm_cli import main

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "not-a-time")
    result = CliRunner().invoke(main, ["bundle", "--checkpoint", str(tmp_path / "unused"), "--out",
                                       str(tmp_path / "out"), "--owner", "alice"])
    assert result.exit_code == 1 and "SOURCE_DATE_EPOCH='not-a-time'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
