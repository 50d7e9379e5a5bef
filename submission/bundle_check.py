"""Reading a bundle's manifest: is the bundle folder (and the checkpoint in it) what was built?

The runner calls this at start, before any job touches the checkpoint; bundle/manifest.py (the
writer side) imports the names from here, so the marker's format lives in one place.
Standard library only (with trm_core/safe_io.py and jsonio.py): it runs on Kaggle before the package's
dependencies are known to work, and the bundle package is not installed there.

Inputs: a bundle folder holding `trm-bundle.json` (every file with size and sha256, the Python
tag the wheels were chosen for), or a checkpoint folder and its manifest.
Outputs: `verify_bundle(dir)`, one sentence per problem ([] when the folder matches its manifest),
and `checkpoint_tampering(ckpt, manifest, problems)`, why a checkpoint must not be used (or None).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from trm_core import jsonio
from trm_core.safe_io import sha256_file

MARKER_NAME = "trm-bundle.json"
FORMAT = "trm-kit-bundle/1"


def read_manifest(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed marker file; ValueError naming the file when it is missing or not a manifest."""
    path = Path(bundle_dir) / MARKER_NAME
    if not path.exists():
        raise ValueError(f"{path} not found: {bundle_dir} is not a trm-kit bundle folder")
    try:  # BOM, repeated keys, nesting and integer limits: the project's one JSON reader
        manifest = jsonio.load(path)
    except jsonio.JSONInputError as e:
        raise ValueError(f"{path} is not readable JSON: {str(e).removeprefix(f'{path}: ')}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a {FORMAT} manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list):
        raise ValueError(f"{path}: not a {FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike, check_hashes: bool = True,
                  check_python: bool = False) -> list[str]:
    """Problems with a bundle folder, one sentence each naming the file; [] when it is intact.

    Checks every listed file exists with its size and (if check_hashes) sha256. With check_python,
    also that this interpreter's tag matches the one the wheels were chosen for.
    """
    root = Path(bundle_dir)
    try:
        manifest = read_manifest(root)
    except ValueError as e:
        return [str(e)]
    problems = []
    for entry in manifest["files"]:
        try:
            rel, size, digest = entry["path"], int(entry["size"]), entry["sha256"]
            if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError("path must be a relative path inside the bundle")
        except (KeyError, TypeError, ValueError, OverflowError):
            problems.append(f"{root / MARKER_NAME}: malformed file entry {str(entry)[:200]}")
            continue
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (listed in {MARKER_NAME})")
            continue
        actual = path.stat().st_size
        if actual != size:
            problems.append(f"{rel}: {actual} bytes, manifest says {size}")
        elif check_hashes and sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 differs from the manifest (file changed or corrupted)")
    if check_python:
        here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        if manifest.get("python_tag") not in (None, here):
            problems.append(f"bundle was built for {manifest['python_tag']} ({manifest.get('target_image')}) "
                            f"but this interpreter is {here}: rebuild with the matching --target")
    return problems


def checkpoint_tampering(ckpt: Path, manifest: object, bundle_problems: list[str]) -> str | None:
    """Why the checkpoint must not be used (None: it may): its weights' sha256 differs from its
    manifest's, or the bundle's own check found a checkpoint file changed."""
    for p in bundle_problems:
        if p.startswith("checkpoint/"):
            return f"bundle check: {p}"
    want = manifest.get("weights_sha256") if isinstance(manifest, dict) else None
    if not isinstance(want, str) or not want:
        return f"{ckpt / 'manifest.json'} has no weights_sha256 to check the weights against"
    try:
        got = sha256_file(ckpt / "model.safetensors")
    except OSError as e:
        return f"{ckpt / 'model.safetensors'}: {e.strerror}"
    if got != want:
        return f"{ckpt / 'model.safetensors'} has sha256 {got[:16]}..., its manifest says {want[:16]}..."
    return None
