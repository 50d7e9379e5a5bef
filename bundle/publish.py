"""Publishing a built bundle to Kaggle, and keeping credentials out of it.

Inputs: the build's output folder (dataset/ and kernel/ with their metadata files), the
competition slug. Outputs: either the exact `kaggle` commands to run (no credentials found: a dry
run that exits cleanly) or the dataset created/versioned, processed, and the notebook pushed
through the kaggle Python API, which is imported only here, only when credentials exist (importing
kaggle authenticates and creates its config folder).

`find_credentials(dir)` scans a folder (archives included, JSON strings and safetensors metadata
parsed, escapes undone, the environment's secret values searched for) for credential files and tokens;
the build refuses to finish when it finds any.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import shlex
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

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
# Between a variable's name and its value: the closing quote or bracket of `"KAGGLE_KEY": "..."`,
# `os.environ["KAGGLE_KEY"] = '...'`, `KAGGLE_KEY=...`, `KAGGLE_KEY: ...`, spaces or none.
_SEP = rb"""["'\]\)]*\s*[=:]\s*["']?"""
_SECRET = rb"(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{16,}"  # a digit in it: `xxxx` placeholders are no key
KAGGLE_KEY_KIND = "KAGGLE_KEY / KAGGLE_API_TOKEN value"
KAGGLE_JSON_KIND = "Kaggle API key (kaggle.json content)"
USERNAME_KEY_KIND = "32-hex key next to a username (Kaggle API key)"
WANDB_KIND = "W&B API key (WANDB_API_KEY / api.wandb.ai)"
CREDENTIAL_PATTERNS = (
    (re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b"), "Hugging Face token (hf_...)"),
    (re.compile(rb"\bKGAT_[A-Za-z0-9]{16,}\b"), "Kaggle API token (KGAT_...)"),
    (re.compile(rb"KAGGLE_(?:KEY|API_TOKEN)" + _SEP + _SECRET, re.I), KAGGLE_KEY_KIND),
    (re.compile(rb"\"key\"\s*:\s*\"[0-9a-fA-F]{32}\""), KAGGLE_JSON_KIND),
    (re.compile(rb"(?:HF_TOKEN|HUGGING_FACE_HUB_TOKEN)" + _SEP + rb"hf_", re.I), "HF_TOKEN value"),
    (re.compile(rb"WANDB_API_KEY" + _SEP + rb"[0-9a-fA-F]{40}\b", re.I), WANDB_KIND),
    (re.compile(rb"api\.wandb\.ai[\s\S]{0,200}?password\s+[0-9a-fA-F]{40}\b"), WANDB_KIND),
)
HEX32 = re.compile(rb"(?<![0-9A-Za-z])[0-9a-fA-F]{32}(?![0-9A-Za-z])")
USERNAME = re.compile(rb"username", re.I)
NEAR = 256  # bytes either side of a 32-hex value searched for a username
# Escaped forms, undone before matching: `\"` and `\\` (a JSON document stored as a JSON or Python
# string, at any depth), `\u0022` / `\x22` escapes, and `\n` / `\t` between a name and its value.
_ESCAPES = re.compile(rb"\\+(?:u00([0-9a-fA-F]{2})|x([0-9a-fA-F]{2})|([\"'/])|([ntr]))")
# Credential variables whose values, when set in the build's environment, must appear nowhere
# in the bundle (whatever the file's syntax); names ending like these count too.
CREDENTIAL_ENV_NAMES = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                        "HUGGINGFACE_TOKEN", "HF_API_TOKEN", "WANDB_API_KEY", "GITHUB_TOKEN", "GH_TOKEN",
                        "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "TWINE_PASSWORD")
CREDENTIAL_ENV_SUFFIXES = ("_TOKEN", "_API_KEY", "_SECRET", "_SECRET_KEY", "_PASSWORD", "_ACCESS_KEY")
MIN_ENV_SECRET = 8  # shorter values ("1", "true", "dummy") would match ordinary bytes
JSON_LIMIT = 64 << 20  # documents up to this size are also parsed, so every string in them is checked
JSON_DEPTH = 8  # JSON documents stored as strings inside JSON, followed this deep
CHUNK = 8 << 20  # bytes read at a time; consecutive chunks overlap so a token cannot straddle two
OVERLAP = 1024


@dataclass(frozen=True)
class Finding:
    path: str  # file (or archive!member) relative to the scanned folder
    reason: str  # the kind of credential, never the secret


def environment_secrets(env: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """{variable name: value} of the credential variables set in env (default: this process's),
    values shorter than MIN_ENV_SECRET left out."""
    env = os.environ if env is None else env
    found = {}
    for name, value in env.items():
        upper = name.upper()
        if upper in CREDENTIAL_ENV_NAMES or upper.endswith(CREDENTIAL_ENV_SUFFIXES):
            value = (value or "").strip()
            if len(value) >= MIN_ENV_SECRET:
                found[name] = value.encode("utf-8", "surrogateescape")
    return found


def _unescape(data: bytes) -> bytes:
    """data with string escapes undone, repeatedly (a JSON document inside a JSON string inside ...)."""
    def one(m: re.Match) -> bytes:
        code = m.group(1) or m.group(2)
        if code is not None:
            return bytes([int(code, 16)]) if int(code, 16) < 0x80 else m.group(0)
        return m.group(3) or b" "
    for _ in range(JSON_DEPTH):
        if b"\\" not in data:
            break
        undone = _ESCAPES.sub(one, data)
        if undone == data:
            break
        data = undone
    return data


def _scan_bytes(data: bytes, secrets: Mapping[str, bytes]) -> list[str]:
    found: list[str] = []
    for text in dict.fromkeys((data, _unescape(data))):
        found += [reason for pattern, reason in CREDENTIAL_PATTERNS if pattern.search(text)]
        for m in HEX32.finditer(text):
            if USERNAME.search(text, max(0, m.start() - NEAR), m.end() + NEAR):
                found.append(USERNAME_KEY_KIND)
                break
        found += [f"the value of ${name} set in this environment" for name, value in secrets.items()
                  if value in text]
    return list(dict.fromkeys(found))


def _is_secret(value: object, hex_len: int | None = None) -> bool:
    if not isinstance(value, str):
        return False
    pattern = rf"[0-9a-fA-F]{{{hex_len}}}" if hex_len else _SECRET.decode()
    return re.fullmatch(pattern, value.strip()) is not None


def _scan_object(node: dict, secrets: Mapping[str, bytes]) -> list[str]:
    """What only the structure shows: a credential variable's name and its value in one object,
    `{"KAGGLE_KEY": ...}` or `{"name": "KAGGLE_KEY", "value": ...}`, and a kaggle.json body."""
    found = []
    named = {str(k).strip().upper(): v for k, v in node.items()}
    label = named.get("NAME", named.get("KEY"))
    pairs = list(named.items()) + ([(label.strip().upper(), named.get("VALUE"))] if isinstance(label, str) else [])
    for name, value in pairs:
        if name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN") and _is_secret(value):
            found.append(KAGGLE_KEY_KIND)
        if name == "WANDB_API_KEY" and _is_secret(value, 40):
            found.append(WANDB_KIND)
    if "USERNAME" in named and any(_is_secret(v, 32) for v in named.values()):
        found.append(KAGGLE_JSON_KIND)
    return found


def _scan_document(doc: object, secrets: Mapping[str, bytes], depth: int = 0) -> list[str]:
    """Every string of a parsed JSON document (keys and values), and the JSON documents stored as
    strings inside it, up to JSON_DEPTH deep. Iterative: a deeply nested document cannot overflow."""
    found: list[str] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found += _scan_object(node, secrets)
            for key, value in node.items():
                stack += [key, value]
        elif isinstance(node, list):
            stack += node
        elif isinstance(node, str):
            found += _scan_bytes(node.encode("utf-8", "surrogatepass"), secrets)
            text = node.strip()
            if depth < JSON_DEPTH and text[:1] in ("{", "[") and len(text) <= JSON_LIMIT:
                inner = _parse_json(text)
                if inner is not None:
                    found += _scan_document(inner, secrets, depth + 1)
    return list(dict.fromkeys(found))


def _parse_json(text: str | bytes) -> object | None:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, too deep, an integer past Python's digit limit
        return None


def _scan_structured(f: BinaryIO, secrets: Mapping[str, bytes]) -> list[str]:
    """The strings of a JSON file or of a safetensors header (its metadata is free-form strings)."""
    head = f.read(4096)
    if len(head) >= 10:
        size = int.from_bytes(head[:8], "little")
        if 2 <= size <= JSON_LIMIT and head[8:9] == b"{":  # safetensors: u64 header length, JSON header
            header = head[8:] + f.read(max(0, size - len(head) + 8))
            doc = _parse_json(header[:size].decode("utf-8", "replace"))
            if doc is not None:
                return _scan_document(doc, secrets)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        data = head + f.read(JSON_LIMIT)
        if len(data) <= JSON_LIMIT:
            doc = _parse_json(data.decode("utf-8-sig", "replace"))
            if doc is not None:
                return _scan_document(doc, secrets)
    return []


def _scan_stream(f: BinaryIO, secrets: Mapping[str, bytes]) -> list[str]:
    """Every byte of a file-like object, whatever its suffix: weights and shared libraries too (a
    safetensors header is free-form JSON metadata, and a symlink can make any name hold anything)."""
    found: list[str] = []
    tail = b""
    while block := f.read(CHUNK):
        window = tail + block
        found += [r for r in _scan_bytes(window, secrets) if r not in found]
        tail = window[-OVERLAP:]
    return found


DECOMPRESSORS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _scan_opened(open_: Callable[[], BinaryIO], rel: str, secrets: Mapping[str, bytes],
                 depth: int = 0) -> list[Finding]:
    """One file or archive member: its bytes, its JSON strings, and what it holds when it is a
    zip archive (whatever its name) or compressed."""
    with open_() as f:
        found = _scan_stream(f, secrets)
    with open_() as f:
        found += [r for r in _scan_structured(f, secrets) if r not in found]
    findings = [Finding(rel, r) for r in found]
    with open_() as f:
        magic = f.read(8)
    for prefix, decompress in DECOMPRESSORS:
        if magic.startswith(prefix) and depth < 3:
            try:
                with open_() as raw, decompress(raw) as inner:
                    findings += [Finding(f"{rel}!(decompressed)", r) for r in _scan_stream(inner, secrets)]
            except (OSError, EOFError, lzma.LZMAError, ValueError):
                findings.append(Finding(rel, "corrupt compressed data (cannot be checked for credentials)"))
    if magic.startswith((b"PK\x03\x04", b"PK\x05\x06")) and depth < 3:  # a zip, whatever its name
        with open_() as f:
            findings += _scan_archive(f, rel, secrets, depth + 1)
    return findings


def _scan_archive(f: BinaryIO, rel: str, secrets: Mapping[str, bytes], depth: int) -> list[Finding]:
    findings = []
    try:
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                member = f"{rel}!{info.filename}"
                named = _is_credential_name(info.filename)
                if named:
                    findings.append(Finding(member, named))
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    findings.append(Finding(member, "symbolic link inside the archive"))
                    continue
                if info.is_dir():
                    continue
                findings += _scan_opened(lambda: zf.open(info), member, secrets, depth)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, NotImplementedError, lzma.LZMAError, ValueError):
        findings.append(Finding(rel, "unreadable archive (cannot be checked for credentials)"))
    return findings


def _is_credential_name(rel: str) -> str | None:
    parts = rel.replace("\\", "/").split("/")
    name = parts[-1]
    if name in CREDENTIAL_FILE_NAMES:
        return CREDENTIAL_FILE_NAMES[name]
    if name == "token" and any(p in (".huggingface", "huggingface") for p in parts[:-1]):
        return "Hugging Face token file"
    return None


def find_credentials(folder: str | os.PathLike, env: Mapping[str, str] | None = None) -> list[Finding]:
    """Credential files, token strings and symbolic links anywhere under folder, inside archives
    (wheels, zips, compressed files) too. Every byte of every file is read, escapes undone; JSON
    files and safetensors headers are parsed so that every string in them (keys, values, JSON
    stored as a string) is checked; the values of credential variables set in env (default: this
    process's environment) are searched for literally. A link is a finding (a bundle holds plain
    files only) and is never followed. Findings name the file and the kind, never the secret."""
    root = Path(folder)
    real_root = root.resolve()
    secrets = environment_secrets(env)
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
            try:
                if path.suffix in (".whl", ".zip") and not zipfile.is_zipfile(path):
                    findings.append(Finding(rel, "unreadable archive (cannot be checked for credentials)"))
                findings += _scan_opened(lambda: open(path, "rb"), rel, secrets)
            except OSError as e:
                findings.append(Finding(rel, f"unreadable ({e.strerror or e}): cannot be checked for credentials"))
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
