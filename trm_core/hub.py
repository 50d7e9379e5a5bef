"""Where a checkpoint spec points: a local path, a file on the Hugging Face hub, or a registry name;
and the registry of known checkpoints itself (pretrained/registry.json: each entry's hub repo,
file, TRMConfig, optimiser variant and provenance; reading it needs no network).

Input: a spec, one of
  - a local path (a kit checkpoint directory or a reference `step_N` file);
  - `hf:owner/repo/path/in/repo[@revision]`: fetched with huggingface_hub (its cache, HF_HUB_CACHE
    and HF_HUB_OFFLINE respected); a path ending in manifest.json names a kit checkpoint on the hub,
    whose model.safetensors is fetched beside it;
  - a name from pretrained/registry.json (its hub repo and file, or its local path).
Output: a `Located` (the local file or folder, what it resolved to, and the registry entry when
the spec was a name), or a `SourceError` that says what to pass instead.

Every command that takes a checkpoint (`trm posttrain`, `predict`, `evaluate`, `solve`, `study`,
`convert`, `dry-run`, `bundle`) resolves it here. huggingface_hub is imported only when a hub
file is needed; a path on disk always wins over a registry name of the same spelling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm_core import jsonio
from trm_core.config import TRMConfig

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "pretrained" / "registry.json"


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    hub_repo: str | None  # "owner/repo" on the Hugging Face hub, or None for a local checkpoint
    filename: str | None  # file inside the hub repo
    path: Path | None  # a local kit checkpoint (relative paths are under pretrained/)
    config: TRMConfig
    optimizer: str  # AdamATan2 variant the weights were trained with: "original" or "lucidrains"
    ema: bool  # the saved trunk weights are the EMA shadow
    info: dict[str, Any]  # everything else recorded (sizes, training data, notes)


class SourceError(ValueError):
    """A checkpoint spec that cannot be resolved; the message says what to pass instead."""


@dataclass(frozen=True)
class Located:
    path: Path  # the local file or kit folder (inside the hub cache for a hub file)
    source: str  # what the spec resolved to: the local path, or owner/repo/file[@revision]
    name: str | None = None  # the registry name, when the spec was one
    entry: dict[str, Any] | None = None  # its registry entry, as written
    link_root: Path | None = None  # the hub cache's repo folder: its snapshots link into its blobs


def registry_path() -> Path:
    """pretrained/registry.json (read when called: tests and forks may point it elsewhere)."""
    return Path(DEFAULT_PATH)


def read_registry(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: entry as written} from the registry; {} when the file is absent."""
    path = registry_path() if path is None else path
    if not path.is_file():
        return {}
    try:
        data = jsonio.load(path)
    except jsonio.JSONInputError as e:
        raise SourceError(f"{path} is not a valid registry: {e}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not a valid registry: expected an object with 'checkpoints', "
                          f"got {type(data).__name__}")
    entries = data.get("checkpoints", {})
    if not isinstance(entries, dict):
        raise SourceError(f"{path}: 'checkpoints' must be an object of named entries")
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


def parse_hub_spec(spec: str) -> tuple[str, str, str | None]:
    """'hf:owner/repo/dir/file.pt@rev' -> ('owner/repo', 'dir/file.pt', 'rev')."""
    m = re.fullmatch(r"hf:([^/\s]+/[^/\s]+)/([^@\s]+?)(?:@([^@\s]+))?", spec)
    if not m:
        raise SourceError(f"hub checkpoint {spec!r}: write it as hf:owner/repo/path/to/file[@revision]")
    return m.group(1), m.group(2), m.group(3)


def hub_download(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """hf_hub_download with errors that say how to supply the file locally instead."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SourceError("hub checkpoints need huggingface_hub: pip install 'trm-kit[bundle]', "
                          "or download the file elsewhere and pass its local path") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as e:  # noqa: BLE001 - offline, missing file, auth: all need the same advice
        rev = f" --revision {revision}" if revision else ""
        raise SourceError(
            f"could not get {filename} from the hub repo {repo_id} ({type(e).__name__}: {e}). Without network "
            f"(or with HF_HUB_OFFLINE=1 and no cached copy) download it on a machine with network:\n"
            f"  hf download {repo_id} {filename}{rev} --local-dir CKPT\n"
            f"then pass --checkpoint CKPT/{filename} (with --config for a reference step_N file)") from None


def registry_spec(name: str, entry: dict[str, Any], where: Path | None = None) -> str:
    """The local path or hf: id a registry entry names: `path` (relative to the registry's folder)
    or `hub_repo` + `filename` [+ `revision`]."""
    where = registry_path() if where is None else where
    if entry.get("path"):
        p = Path(str(entry["path"]))
        return str(p if p.is_absolute() else where.parent / p)
    repo, filename, revision = entry.get("hub_repo"), entry.get("filename"), entry.get("revision")
    if not isinstance(repo, str) or not isinstance(filename, str) or not repo or not filename:
        raise SourceError(f"{where}: entry {name!r} needs hub_repo and filename (or a local path)")
    return f"hf:{repo}/{filename}" + (f"@{revision}" if isinstance(revision, str) and revision else "")


def locate(spec: str, registry: dict[str, dict[str, Any]] | None = None) -> Located:
    """The local file or folder `spec` names (see the module docstring); hub files are fetched
    into the hub cache. `registry`: entries to use instead of pretrained/registry.json."""
    path = Path(spec).expanduser()
    if not spec.startswith("hf:") and _exists(path):  # a path on disk wins: no registry is read
        return Located(path.resolve(), str(path))
    registry = read_registry() if registry is None else registry
    if spec in registry:
        try:
            target = registry_spec(spec, registry[spec])
            if not target.startswith("hf:") and not _exists(Path(target)):
                raise SourceError(f"its path {target} does not exist")
            found = locate(target, {})
        except SourceError as e:
            raise SourceError(f"registry checkpoint {spec!r}: {e}") from None
        return Located(found.path, found.source, spec, registry[spec], found.link_root)
    if spec.startswith("hf:"):
        repo_id, filename, revision = parse_hub_spec(spec)
        local = hub_download(repo_id, filename, revision)
        if local.name == "manifest.json":
            sibling = filename.rsplit("/", 1)[0] + "/model.safetensors" if "/" in filename else "model.safetensors"
            weights = hub_download(repo_id, sibling, revision)
            if weights.parent != local.parent:
                raise SourceError(f"{spec}: manifest.json and model.safetensors resolved to different folders")
            local = local.parent
        return Located(local, f"{repo_id}/{filename}" + (f"@{revision}" if revision else ""),
                       link_root=_hub_repo_root(local))
    names = ", ".join(sorted(registry)) or f"none ({registry_path()} is missing)"
    shown = repr(spec) if len(spec) <= 200 else repr(spec[:200]) + f"... ({len(spec)} characters)"
    raise SourceError(f"checkpoint {shown} is not a file, a kit directory, an hf:owner/repo/file id, "
                      f"or a registry name (known: {names})")


def _exists(path: Path) -> bool:
    """path.exists(), False for a name the system refuses (too long, a NUL character)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _hub_repo_root(path: Path) -> Path:
    """models--owner--repo/ above a hub cache snapshot path (its snapshots/ link into its blobs/)."""
    for parent in path.parents:
        if parent.name == "snapshots":
            return parent.parent
    return path


# ---- the registry as typed entries ---------------------------------------------------------------


def load_registry(path: str | Path | None = None) -> dict[str, RegistryEntry]:
    path = Path(path) if path else DEFAULT_PATH
    try:
        raw = json.loads(path.read_text())["checkpoints"]
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint registry not found at {path}") from None
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path} is not a valid registry: {e}") from None
    entries = {}
    for name, e in raw.items():
        local = Path(e["path"]) if e.get("path") else None
        entries[name] = RegistryEntry(
            name=name, hub_repo=e.get("hub_repo"), filename=e.get("filename"),
            path=(local if local.is_absolute() else path.parent / local) if local else None,
            config=entry_config(name, e), optimizer=e.get("optimizer", "original"),
            ema=bool(e.get("ema", False)),
            info={k: v for k, v in e.items() if k not in ("hub_repo", "filename", "path", "config", "optimizer", "ema")})
    return entries


def entry_config(name: str, entry: dict[str, Any]) -> TRMConfig:
    """The arch config a registry entry records: a preset plus overrides, {"preset": "paper",
    "puzzle_emb_len": 16}; puzzle_emb_len cannot be read from the weights, so it is written there."""
    cfg = entry.get("config", {})
    if not isinstance(cfg, dict):
        raise ValueError(f"registry entry {name!r}: config must be an object such as {{\"preset\": \"paper\"}}, "
                         f"got {type(cfg).__name__}")
    cfg = dict(cfg)
    preset = cfg.pop("preset", "paper")
    return TRMConfig.from_name(preset, **cfg)


def lookup(name: str, path: str | Path | None = None) -> RegistryEntry:
    entries = load_registry(path)
    if name not in entries:
        raise KeyError(f"{name!r} is not in the checkpoint registry; known: {', '.join(sorted(entries))}")
    return entries[name]
