"""bundle.publish: the credential scanner, credential detection without importing kaggle, and the
--push dry run (exact commands, exit 0, kaggle never imported)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundle import BundleError
from bundle.publish import detect_kaggle_credentials, find_credentials, read_plan

REPO = Path(__file__).resolve().parent.parent
HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def test_scanner_finds_credential_files_and_tokens(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "kaggle.json").write_text('{"username": "alice", "key": "0123456789abcdef0123456789abcdef"}')
    (tmp_path / "cfg" / ".huggingface").mkdir(parents=True)
    (tmp_path / "cfg" / ".huggingface" / "token").write_text("x")
    (tmp_path / "notes.txt").write_text(f"token = {HF_TOKEN}\n")
    (tmp_path / "access_token").write_text("KGAT_0123456789abcdef0123")
    with zipfile.ZipFile(tmp_path / "wheels" / "pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("pkg/settings.py", "KAGGLE_KEY = '0123456789abcdef0123456789abcdef'\n")
        zf.writestr("pkg/.netrc", "machine x login y password z\n")
    found = {(f.path, f.reason) for f in find_credentials(tmp_path)}
    paths = {p for p, _ in found}
    assert {"kaggle.json", "cfg/.huggingface/token", "notes.txt", "access_token",
            "wheels/pkg-1.0-py3-none-any.whl!pkg/settings.py", "wheels/pkg-1.0-py3-none-any.whl!pkg/.netrc"} <= paths
    assert ("notes.txt", "Hugging Face token (hf_...)") in found
    assert ("kaggle.json", "Kaggle API key (kaggle.json content)") in found


def test_scanner_passes_clean_folders(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "README.md").write_text("Set KAGGLE_KEY in your shell; never commit hf_ tokens.\n")
    assert find_credentials(tmp_path) == []


def test_detects_credentials_without_reading_them(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert detect_kaggle_credentials({}, home) == []
    assert detect_kaggle_credentials({"KAGGLE_API_TOKEN": "t"}, home) == ["environment variable KAGGLE_API_TOKEN"]
    assert detect_kaggle_credentials({"KAGGLE_USERNAME": "a"}, home) == []  # a username alone is not a credential
    assert detect_kaggle_credentials({"KAGGLE_USERNAME": "a", "KAGGLE_KEY": "k"}, home) == [
        "environment variables KAGGLE_USERNAME and KAGGLE_KEY"]
    (home / ".config" / "kaggle").mkdir(parents=True)
    (home / ".config" / "kaggle" / "access_token").write_text("t")
    assert detect_kaggle_credentials({}, home) == [f"file {home / '.config' / 'kaggle' / 'access_token'}"]
    custom = tmp_path / "cfg"
    custom.mkdir()
    (custom / "kaggle.json").write_text("{}")
    assert detect_kaggle_credentials({"KAGGLE_CONFIG_DIR": str(custom)}, home) == [f"file {custom / 'kaggle.json'}"]


def built_bundle(out: Path, owner: str = "alice") -> Path:
    (out / "dataset").mkdir(parents=True)
    (out / "kernel").mkdir()
    (out / "dataset" / "dataset-metadata.json").write_text(json.dumps({"id": f"{owner}/trm-kit-bundle"}))
    (out / "kernel" / "kernel-metadata.json").write_text(json.dumps(
        {"id": f"{owner}/trm-kit-bundle-submit", "competition_sources": ["arc-prize-2026-arc-agi-2"]}))
    return out


def test_plan_lists_the_exact_commands(tmp_path):
    plan = read_plan(built_bundle(tmp_path / "out"), version_notes="v 1")
    text = "\n".join(plan.commands)
    d, k = tmp_path / "out" / "dataset", tmp_path / "out" / "kernel"
    assert f"kaggle datasets create -p {d} --dir-mode zip" in text
    assert f"kaggle datasets version -p {d} --dir-mode zip -m 'v 1'" in text
    assert "kaggle datasets status alice/trm-kit-bundle" in text
    assert f"kaggle kernels push -p {k}" in text
    assert ("kaggle competitions submit -c arc-prize-2026-arc-agi-2 -k alice/trm-kit-bundle-submit -v N "
            "-f submission.json -m 'v 1'") in text
    with pytest.raises(BundleError, match="not a built bundle"):
        read_plan(tmp_path / "nothing")


DRY_RUN = r"""
import sys
from pathlib import Path
from bundle.publish import publish
lines = []
publish(Path(sys.argv[1]), echo=lines.append)
print("\n".join(lines))
print("KAGGLE-IMPORTED" if any(m == "kaggle" or m.startswith("kaggle.") for m in sys.modules) else "KAGGLE-NOT-IMPORTED")
"""


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "XDG_CONFIG"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    return env


def test_push_without_credentials_is_a_dry_run_that_never_imports_kaggle(tmp_path):
    out = built_bundle(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-c", DRY_RUN, str(out)], capture_output=True, text=True,
                          env=clean_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "No Kaggle credentials found" in proc.stdout and "Dry run" in proc.stdout
    assert "kaggle kernels push -p" in proc.stdout and "kaggle datasets status alice/trm-kit-bundle" in proc.stdout
    assert proc.stdout.strip().endswith("KAGGLE-NOT-IMPORTED")
    assert not (tmp_path / "home" / ".kaggle").exists()


def test_push_refuses_a_bundle_with_credentials_or_a_placeholder_owner(tmp_path):
    from bundle.publish import publish

    out = built_bundle(tmp_path / "a")
    (out / "dataset" / "kaggle.json").write_text("{}")
    with pytest.raises(BundleError, match="kaggle.json"):
        publish(out, echo=lambda s: None, env={}, home=tmp_path)
    out = built_bundle(tmp_path / "b", owner="your-username")
    with pytest.raises(BundleError, match="--owner"):
        publish(out, echo=lambda s: None, env={}, home=tmp_path)
