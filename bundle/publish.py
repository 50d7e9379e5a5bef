"""Publishing a built bundle to Kaggle, and keeping credentials out of it.

Inputs: the build's output folder (dataset/ and kernel/ with their metadata files), the
competition slug. Outputs: either the exact `kaggle` commands to run (no credentials found: a dry
run that exits cleanly) or the dataset created/versioned, processed, and the notebook pushed
through the kaggle Python API, which is imported only here, only when credentials exist (importing
kaggle authenticates and creates its config folder).

`find_credentials(dir)` scans a folder (wheel archives included) for credential files and tokens;
the build refuses to finish when it finds any.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from bundle import BundleError

CREDENTIAL_FILE_NAMES = {
    "kaggle.json": "Kaggle API key file",
    "access_token": "Kaggle access token file",
    "access_token.txt": "Kaggle access token file",
    "credentials.json": "OAuth credentials file",
    ".netrc": "netrc login file",
    ".git-credentials": "git credentials file",
    ".pypirc": "PyPI credentials file",
    "stored_tokens": "Hugging Face token store",
}
CREDENTIAL_PATTERNS = (
    (re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b"), "Hugging Face token (hf_...)"),
    (re.compile(rb"\bKGAT_[A-Za-z0-9]{16,}\b"), "Kaggle API token (KGAT_...)"),
    (re.compile(rb"KAGGLE_(?:KEY|API_TOKEN)\s*[=:]\s*[\"']?[A-Za-z0-9_]{16,}"), "KAGGLE_KEY / KAGGLE_API_TOKEN value"),
    (re.compile(rb"\"key\"\s*:\s*\"[0-9a-f]{32}\""), "Kaggle API key (kaggle.json content)"),
    (re.compile(rb"HF_TOKEN\s*[=:]\s*[\"']?hf_"), "HF_TOKEN value"),
)
CHUNK = 8 << 20  # bytes read at a time; consecutive chunks overlap so a token cannot straddle two
OVERLAP = 512


@dataclass(frozen=True)
class Finding:
    path: str  # file (or archive!member) relative to the scanned folder
    reason: str


def _scan_bytes(data: bytes) -> list[str]:
    return [reason for pattern, reason in CREDENTIAL_PATTERNS if pattern.search(data)]


def _scan_stream(f) -> list[str]:
    """Every byte of a file-like object, whatever its suffix: weights and shared libraries too (a
    safetensors header is free-form JSON metadata, and a symlink can make any name hold anything)."""
    found: list[str] = []
    tail = b""
    while block := f.read(CHUNK):
        window = tail + block
        found += [r for r in _scan_bytes(window) if r not in found]
        tail = window[-OVERLAP:]
    return found


def _is_credential_name(rel: str) -> str | None:
    parts = rel.replace("\\", "/").split("/")
    name = parts[-1]
    if name in CREDENTIAL_FILE_NAMES:
        return CREDENTIAL_FILE_NAMES[name]
    if name == "token" and any(p in (".huggingface", "huggingface") for p in parts[:-1]):
        return "Hugging Face token file"
    return None


def find_credentials(folder: str | os.PathLike) -> list[Finding]:
    """Credential files, token strings and symbolic links anywhere under folder, inside wheels/zips
    too. Every file is read in full; a link is a finding (a bundle holds plain files only), and a
    link that leaves the folder is not followed."""
    root = Path(folder)
    real_root = root.resolve()
    findings: list[Finding] = []
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk does not descend into linked folders
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = Path(os.path.realpath(path))
                inside = target == real_root or real_root in target.parents
                findings.append(Finding(rel, f"symbolic link to {'a file inside' if inside else 'outside'} the "
                                             "bundle (copy the file itself)"))
                continue
            if name in dirnames:
                continue
            named = _is_credential_name(rel)
            if named:
                findings.append(Finding(rel, named))
            if path.suffix in (".whl", ".zip"):
                findings += _scan_archive(path, rel)
                continue
            try:
                with open(path, "rb") as f:
                    findings += [Finding(rel, r) for r in _scan_stream(f)]
            except OSError as e:
                findings.append(Finding(rel, f"unreadable ({e.strerror}): cannot be checked for credentials"))
    return findings


def _scan_archive(path: Path, rel: str) -> list[Finding]:
    findings = []
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = f"{rel}!{info.filename}"
                named = _is_credential_name(info.filename)
                if named:
                    findings.append(Finding(member, named))
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    findings.append(Finding(member, "symbolic link inside the archive"))
                    continue
                with zf.open(info) as f:
                    findings += [Finding(member, r) for r in _scan_stream(f)]
    except (zipfile.BadZipFile, OSError, RuntimeError):
        findings.append(Finding(rel, "unreadable archive (cannot be checked for credentials)"))
    return findings


# ---- credentials of this machine (never read into the bundle) -----------------------------------


def kaggle_config_dir(env: Mapping[str, str], home: Path) -> Path:
    """Where kaggle looks for kaggle.json / access_token: $KAGGLE_CONFIG_DIR, ~/.kaggle, XDG."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"]).expanduser()
    default = home / ".kaggle"
    if default.is_dir():
        return default
    xdg = env.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else home / ".config") / "kaggle"


def detect_kaggle_credentials(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[str]:
    """Where Kaggle credentials are available (descriptions, never the secrets), without importing kaggle."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    found = []
    if env.get("KAGGLE_API_TOKEN"):
        found.append("environment variable KAGGLE_API_TOKEN")
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        found.append("environment variables KAGGLE_USERNAME and KAGGLE_KEY")
    config = kaggle_config_dir(env, home)
    for name in ("access_token", "access_token.txt", "kaggle.json", "credentials.json"):
        if (config / name).is_file():
            found.append(f"file {config / name}")
    return found


# ---- the commands, and the API path ---------------------------------------------------------------


@dataclass(frozen=True)
class PublishPlan:
    dataset_dir: Path
    kernel_dir: Path
    dataset_ref: str  # owner/slug
    kernel_ref: str  # owner/kernel-slug
    competition: str
    version_notes: str
    commands: list[str] = field(default_factory=list)


def read_plan(out_dir: Path, competition: str | None = None, version_notes: str | None = None) -> PublishPlan:
    """The refs and folders of a built bundle, read from its metadata files."""
    dataset_dir, kernel_dir = out_dir / "dataset", out_dir / "kernel"
    try:
        dmeta = json.loads((dataset_dir / "dataset-metadata.json").read_text())
        kmeta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{out_dir} is not a built bundle (dataset/ and kernel/ metadata): {e}") from None
    comp = competition or (kmeta.get("competition_sources") or [""])[0]
    notes = version_notes or "trm-kit bundle"
    dref, kref = dmeta["id"], kmeta["id"]
    q = shlex.quote
    commands = [
        f"# first upload of the dataset (private); if it already exists use the `version` line instead",
        f"kaggle datasets create -p {q(str(dataset_dir))} --dir-mode zip",
        f"kaggle datasets version -p {q(str(dataset_dir))} --dir-mode zip -m {q(notes)}",
        f"# repeat until it prints `ready` (Kaggle processes uploads before notebooks can attach them)",
        f"kaggle datasets status {dref}",
        f"kaggle kernels push -p {q(str(kernel_dir))}",
        f"# wait for the run to finish (COMPLETE); the push printed the version number N",
        f"kaggle kernels status {kref}",
        f"kaggle competitions submit -c {comp} -k {kref} -v N -f submission.json -m {q(notes)}",
    ]
    return PublishPlan(dataset_dir, kernel_dir, dref, kref, comp, notes, commands)


def _field(obj: object, *names: str) -> object:
    for name in names:
        value = getattr(obj, name, None) if not isinstance(obj, dict) else obj.get(name)
        if value not in (None, ""):
            return value
    return None


def publish(out_dir: Path, competition: str | None = None, version_notes: str | None = None,
            echo: Callable[[str], None] = print, env: Mapping[str, str] | None = None,
            home: Path | None = None, poll_s: float = 10.0, ready_timeout_s: float = 3600.0) -> PublishPlan:
    """Push a built bundle, or print the commands when this machine has no Kaggle credentials."""
    plan = read_plan(out_dir, competition, version_notes)
    findings = find_credentials(plan.dataset_dir) + find_credentials(plan.kernel_dir)
    if findings:
        raise BundleError("refusing to publish, credentials inside the bundle: " +
                          "; ".join(f"{f.path} ({f.reason})" for f in findings))
    if "your-username" in (plan.dataset_ref + plan.kernel_ref):
        raise BundleError("the metadata still has the placeholder owner 'your-username': rebuild with --owner YOURNAME")
    sources = detect_kaggle_credentials(env, home)
    if not sources:
        echo("No Kaggle credentials found (KAGGLE_API_TOKEN, KAGGLE_USERNAME+KAGGLE_KEY, or kaggle.json / "
             "access_token in the kaggle config folder). Dry run: these are the commands to run:")
        for cmd in plan.commands:
            echo(cmd)
        return plan
    echo(f"Kaggle credentials: {', '.join(sources)}")
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported only here: it authenticates on import

    api = KaggleApi()
    api.authenticate()
    try:
        api.dataset_status(plan.dataset_ref)
        exists = True
    except Exception:  # noqa: BLE001 - the client raises HTTP 404 for a new dataset
        exists = False
    if exists:
        echo(f"dataset {plan.dataset_ref} exists: creating a new version")
        result = api.dataset_create_version(str(plan.dataset_dir), plan.version_notes, dir_mode="zip")
    else:
        echo(f"creating dataset {plan.dataset_ref} (private)")
        result = api.dataset_create_new(str(plan.dataset_dir), public=False, dir_mode="zip")
    error = _field(result, "error")
    if error:
        raise BundleError(f"Kaggle refused the dataset {plan.dataset_ref}: {error}")
    start = time.time()
    while True:
        status = str(api.dataset_status(plan.dataset_ref)).lower()
        echo(f"dataset status: {status}")
        if status == "ready":
            break
        if status in ("error", "failed"):
            raise BundleError(f"Kaggle could not process the dataset {plan.dataset_ref} (status {status})")
        if time.time() - start > ready_timeout_s:
            raise BundleError(f"dataset {plan.dataset_ref} not ready after {ready_timeout_s:.0f}s; run "
                              f"`kaggle datasets status {plan.dataset_ref}` and then `kaggle kernels push -p {plan.kernel_dir}`")
        time.sleep(poll_s)
    response = api.kernels_push(str(plan.kernel_dir))
    error = _field(response, "error")
    if error:
        raise BundleError(f"Kaggle refused the notebook {plan.kernel_ref}: {error}")
    version = _field(response, "version_number", "versionNumber") or "N"
    echo(f"pushed {plan.kernel_ref} version {version}: {_field(response, 'url') or ''}")
    echo("when the run is COMPLETE (`kaggle kernels status " + plan.kernel_ref + "`), submit with:")
    echo(f"kaggle competitions submit -c {plan.competition} -k {plan.kernel_ref} -v {version} "
         f"-f submission.json -m {shlex.quote(plan.version_notes)}")
    return plan
