"""The bundle manifest: the marker file that identifies a bundle folder and lists what is in it.

Inputs: a bundle (dataset) folder with its files in place.
Outputs: `trm-bundle.json` in that folder (every file with size and sha256, the trm-kit version,
target image and Python tag, creation time, a bundle id). Its reader, `verify_bundle(dir)` (a list
of problems, empty when the folder matches its manifest), lives with the runner that calls it at
start (submission/bundle_check.py) and is re-exported here with the marker's name and format.

Standard library only. The manifest does not list itself nor Kaggle's dataset-metadata.json
(which Kaggle does not upload), so its creation time never changes the bundle id; every file it
lists is built without the build's time (`build_epoch`: SOURCE_DATE_EPOCH, else a fixed date),
so a rebuild of the same inputs keeps the id a pushed notebook expects.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from submission.bundle_check import FORMAT, MARKER_NAME, read_manifest, sha256_file, verify_bundle
from trm_core.safe_io import write_atomic

__all__ = ["FIXED_EPOCH", "FORMAT", "MARKER_NAME", "NOT_LISTED", "EpochError", "build_epoch", "bundle_id",
           "list_files", "read_manifest", "sha256_file", "source_date_epoch", "verify_bundle", "write_manifest"]

NOT_LISTED = (MARKER_NAME, "dataset-metadata.json", "datapackage.json")
FIXED_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip archive can record
LAST_ZIP_EPOCH = 4354819199  # 2107-12-31T23:59:59Z, the latest


class EpochError(ValueError):
    """SOURCE_DATE_EPOCH is set to something that is not a usable Unix time."""


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (the reproducible-builds convention) as an int, or None when unset;
    EpochError when it is not a whole number of seconds between 1980 and 2107 (zip's range)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not FIXED_EPOCH <= int(raw[:12]) <= LAST_ZIP_EPOCH:
        raise EpochError(f"SOURCE_DATE_EPOCH={raw[:40]!r}: a Unix time in whole seconds from {FIXED_EPOCH} (1980) "
                         f"to {LAST_ZIP_EPOCH} (2107), the range a zip archive records; or unset it")
    return int(raw)


def build_epoch() -> int:
    """The time written into the bundle's hashed files (wheel members, converted checkpoint):
    SOURCE_DATE_EPOCH when set, else FIXED_EPOCH, never the clock (it would change the bundle id)."""
    epoch = source_date_epoch()
    return FIXED_EPOCH if epoch is None else epoch


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
    """Hash every file of bundle_dir and write the marker file; returns the manifest. created_at is
    now, or SOURCE_DATE_EPOCH when set (then a rebuild writes the same manifest bytes too)."""
    files = list_files(bundle_dir)
    epoch = source_date_epoch()
    created = _dt.datetime.now(_dt.timezone.utc) if epoch is None else \
        _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "bundle_id": bundle_id(files),
        "trm_kit_version": trm_version,
        "target_image": target,
        "python_tag": python_tag,
        "created_at": created.isoformat(timespec="seconds"),
        "files": files,
    }
    manifest.update(extra or {})
    write_atomic(bundle_dir / MARKER_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest
