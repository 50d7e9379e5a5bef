"""The bundle manifest: the marker file that identifies a bundle folder and lists what is in it.

Inputs: a bundle (dataset) folder with its files in place.
Outputs: `trm-bundle.json` in that folder (every file with size and sha256, the trm-kit version,
target image and Python tag, creation time, a bundle id). Its reader, `verify_bundle(dir)` (a list
of problems, empty when the folder matches its manifest), lives with the runner that calls it at
start (submission/bundle_check.py) and is re-exported here with the marker's name and format.

Standard library only. The manifest does not list itself nor Kaggle's dataset-metadata.json
(which Kaggle does not upload).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from submission.bundle_check import FORMAT, MARKER_NAME, read_manifest, sha256_file, verify_bundle
from trm_core.safe_io import write_atomic

__all__ = ["FORMAT", "MARKER_NAME", "NOT_LISTED", "bundle_id", "list_files", "read_manifest", "sha256_file",
           "verify_bundle", "write_manifest"]

NOT_LISTED = (MARKER_NAME, "dataset-metadata.json", "datapackage.json")


def list_files(bundle_dir: Path) -> list[dict[str, Any]]:
    """[{path, size, sha256}] of every file under bundle_dir (posix relative paths, sorted)."""
    entries = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel in NOT_LISTED:
            continue
        entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def bundle_id(files: list[dict[str, Any]]) -> str:
    """16 hex digits naming the bundle's content (same files -> same id)."""
    h = hashlib.sha256()
    for e in files:
        h.update(f"{e['path']}\0{e['size']}\0{e['sha256']}\n".encode())
    return h.hexdigest()[:16]


def write_manifest(bundle_dir: Path, *, trm_version: str, target: str, python_tag: str,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file of bundle_dir and write the marker file; returns the manifest."""
    files = list_files(bundle_dir)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "bundle_id": bundle_id(files),
        "trm_kit_version": trm_version,
        "target_image": target,
        "python_tag": python_tag,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    manifest.update(extra or {})
    write_atomic(bundle_dir / MARKER_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest
