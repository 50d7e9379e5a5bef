"""The credential scan (bundle.publish.find_credentials) over every route a key can take into a
bundle: JSON fields and their escaped forms, JSON stored as a string, safetensors metadata, wheel
members (and archives inside them), the build environment's own secret values; its findings name
the file and the kind, never the secret; hostile files end in a finding or nothing, never a crash."""

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest

from bundle.publish import find_credentials

KEY = "0123456789abcdef0123456789abcdef"  # a kaggle.json key: 32 hex
KAGGLE_BODY = {"username": "alice", "key": KEY}
WANDB = "a1b2c3d4e5" * 4  # 40 hex


def _found(folder: Path, env: dict[str, str] | None = None) -> dict[str, list[str]]:
    by_path: dict[str, list[str]] = {}
    for f in find_credentials(folder, env={} if env is None else env):
        by_path.setdefault(f.path, []).append(f.reason)
    return by_path


MANIFEST_FORMS = {
    "KAGGLE_KEY as a JSON field": json.dumps({"provenance": {"env": {"KAGGLE_KEY": KEY}}}),
    "KAGGLE_API_TOKEN, no spaces": json.dumps({"KAGGLE_API_TOKEN": KEY}, separators=(",", ":")),
    "single-quoted, lower case": "{'kaggle_key' : '%s'}" % KEY,
    "kaggle.json body stored as a string": json.dumps({"provenance": {"note": json.dumps(KAGGLE_BODY)}}),
    "kaggle.json body, key first": json.dumps({"key": KEY, "username": "alice"}),
    "JSON inside JSON inside JSON": json.dumps({"a": json.dumps({"b": json.dumps({"KAGGLE_KEY": KEY})})}),
    "\\u0022 escapes": '{"env": "\\u0022KAGGLE_KEY\\u0022: \\u0022%s\\u0022"}' % KEY,
    "an escaped field name": '{"user\\u006eame": "alice", "k\\u0065y": "%s"}' % KEY,
    "a name/value pair": json.dumps({"env": [{"name": "KAGGLE_KEY", "value": KEY}]}),
    "32 hex next to a username": "username: alice\nsecret: %s\n" % KEY,
}


@pytest.mark.parametrize("form", sorted(MANIFEST_FORMS))
def test_a_kaggle_key_in_a_manifest_is_found_in_any_syntax(tmp_path: Path, form: str) -> None:
    (tmp_path / "manifest.json").write_text(MANIFEST_FORMS[form])
    reasons = _found(tmp_path).get("manifest.json", [])
    assert reasons and all("Kaggle" in r or "KAGGLE" in r for r in reasons), (form, reasons)
    assert not any(KEY in r for r in reasons)  # the finding never prints the secret


def test_a_key_in_safetensors_metadata_is_found_in_its_strings(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"w": torch.zeros(2, 2)}
    save_file(tensors, str(tmp_path / "body.safetensors"), metadata={"note": json.dumps(KAGGLE_BODY)})
    save_file(tensors, str(tmp_path / "field.safetensors"), metadata={"KAGGLE_KEY": KEY})
    save_file(tensors, str(tmp_path / "clean.safetensors"), metadata={"trm_config": json.dumps({"hidden": 64})})
    found = _found(tmp_path)
    assert "Kaggle API key (kaggle.json content)" in found["body.safetensors"]
    assert any("KAGGLE_KEY" in r for r in found["field.safetensors"])
    assert "clean.safetensors" not in found


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


def test_wheel_members_and_archives_inside_them_are_read(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("deep/config.json", json.dumps(KAGGLE_BODY))
    _wheel(tmp_path / "trm_kit-0.1-py3-none-any.whl", {
        "bundle/settings.local.json": json.dumps({"KAGGLE_KEY": KEY}).encode(),
        "pkg/data.bin": inner.getvalue(),  # a zip, whatever its name
        "pkg/notes.txt.gz": gzip.compress(f"WANDB_API_KEY={WANDB}\n".encode()),
        "pkg/ok.py": b"import os\nkey = os.environ.get('KAGGLE_KEY')\n"})
    found = _found(tmp_path)
    w = "trm_kit-0.1-py3-none-any.whl"
    assert any("KAGGLE_KEY" in r for r in found[f"{w}!bundle/settings.local.json"])
    assert "Kaggle API key (kaggle.json content)" in found[f"{w}!pkg/data.bin!deep/config.json"]
    assert any("W&B" in r for r in found[f"{w}!pkg/notes.txt.gz!(decompressed)"])
    assert f"{w}!pkg/ok.py" not in found


def test_wandb_keys_are_found(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(f'os.environ["WANDB_API_KEY"] = "{WANDB}"\n')
    (tmp_path / "netrc.txt").write_text(f"machine api.wandb.ai\n  login user\n  password {WANDB}\n")
    (tmp_path / "commit.txt").write_text(f"built from commit {WANDB}\n")  # a git sha alone is no key
    found = _found(tmp_path)
    assert set(found) == {"train.py", "netrc.txt"}
    assert all(r == ["W&B API key (WANDB_API_KEY / api.wandb.ai)"] for r in found.values())


def test_the_values_of_credential_variables_in_the_environment_are_found(tmp_path: Path, monkeypatch) -> None:
    secret = "s3cret-Value-of-mine"
    (tmp_path / "provenance.json").write_text(json.dumps({"cmd": f"train --token {secret}"}))
    (tmp_path / "escaped.json").write_text('{"cmd": "%s"}' % "".join(f"\\u{ord(c):04x}" for c in secret))
    (tmp_path / "short.txt").write_text("value: abc\n")
    env = {"HF_TOKEN": secret, "MY_SERVICE_API_KEY": "abc", "HOME": "/home/alice"}
    found = _found(tmp_path, env)
    assert found == {"provenance.json": ["the value of $HF_TOKEN set in this environment"],
                     "escaped.json": ["the value of $HF_TOKEN set in this environment"]}
    # by default the scan reads this process's environment
    monkeypatch.setenv("WANDB_API_KEY", secret)
    assert any("$WANDB_API_KEY" in f.reason for f in find_credentials(tmp_path))


def test_ordinary_files_are_not_findings(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({
        "weights_md5": KEY, "KAGGLE_KEY": None, "hint": "Set KAGGLE_KEY in your shell",
        "example": {"KAGGLE_KEY": "xxxxxxxxxxxxxxxxxxxxxxxx"}, "tasks": {"00576224": 0}}))
    (tmp_path / "code.py").write_text("username = env.get('KAGGLE_USERNAME')\nkey = env.get('KAGGLE_KEY')\n")
    assert _found(tmp_path) == {}


HOSTILE = {
    "deep.json": b"[" * 200_000 + b"]" * 200_000,
    "huge-int.json": b'{"n": ' + b"9" * 100_000 + b"}",
    "nan.json": b'{"x": NaN, "y": -Infinity}',
    "empty.json": b"",
    "bad-utf8.json": b'{"x": "\xff\xfe"}',
    "lying.safetensors": (2**63).to_bytes(8, "little") + b"{}",
    "short.safetensors": (50).to_bytes(8, "little") + b'{"__metadata__": {"a": "',
    "odd-escapes.txt": b"\\u00zz \\\\\\ \\x4",
    "surrogate.json": b'{"x": "\\ud800"}',
}


def test_hostile_files_end_in_findings_or_nothing_never_a_crash(tmp_path: Path) -> None:
    for name, body in HOSTILE.items():
        (tmp_path / name).write_bytes(body)
    (tmp_path / "broken.whl").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "corrupt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    found = _found(tmp_path)
    assert set(found) == {"broken.whl", "corrupt.gz"}
    assert any("unreadable archive" in r for r in found["broken.whl"])
    assert any("corrupt compressed data" in r for r in found["corrupt.gz"])
    (tmp_path / "deep-key.json").write_text("[" * 5000 + json.dumps({"KAGGLE_KEY": KEY}) + "]" * 5000)
    assert "deep-key.json" in _found(tmp_path)  # past the parser's depth the text scan still reads it
