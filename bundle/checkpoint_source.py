"""Resolve a `--checkpoint` spec to a slim kit checkpoint directory for the bundle.

Inputs: a spec, one of
  - a kit checkpoint directory (holds manifest.json and model.safetensors);
  - a reference `step_N` file, with `config` (a preset name or a config file; without one, the
    all_config.yaml its training run wrote beside it);
  - `hf:owner/repo/path/in/repo[@revision]`: a file on the Hugging Face hub, fetched at build time
    with huggingface_hub (its cache, HF_HUB_CACHE and HF_HUB_OFFLINE respected); a path ending in
    manifest.json names a kit checkpoint on the hub (its model.safetensors is fetched beside it);
  - a name from pretrained/registry.json (hub repo, file name, arch config).
and a cache folder for the converted checkpoint.
Outputs: the path of a slim kit checkpoint directory, and its source size for the size report.

Conversion is `trm_core.checkpoint.convert(src, config, out_dir)` (slim by default), imported only
when a conversion is needed; a kit directory that is already slim is used as it is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import BundleError

KIT_FILES = ("manifest.json", "model.safetensors")
REGISTRY_PATH = Path(__file__).resolve().parent.parent / "pretrained" / "registry.json"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path  # slim kit checkpoint directory
    source: str  # what the spec resolved to (local path, or hub repo/file@revision)
    source_bytes: int  # size of the source before slimming
    link_root: Path | None = None  # symlinks may point inside this folder (the hub cache's repo); None: path


def is_kit_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in KIT_FILES)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def parse_hub_spec(spec: str) -> tuple[str, str, str | None]:
    """'hf:owner/repo/dir/file.pt@rev' -> ('owner/repo', 'dir/file.pt', 'rev')."""
    m = re.fullmatch(r"hf:([^/\s]+/[^/\s]+)/([^@\s]+?)(?:@([^@\s]+))?", spec)
    if not m:
        raise BundleError(f"hub checkpoint {spec!r}: write it as hf:owner/repo/path/to/file[@revision]")
    return m.group(1), m.group(2), m.group(3)


def hub_download(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """hf_hub_download with errors that say how to supply the file locally instead."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise BundleError("hub checkpoints need huggingface_hub: pip install 'trm-kit[bundle]', "
                          "or download the file elsewhere and pass its local path") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as e:  # noqa: BLE001 - offline, missing file, auth: all need the same advice
        rev = f" --revision {revision}" if revision else ""
        raise BundleError(
            f"could not get {filename} from the hub repo {repo_id} ({type(e).__name__}: {e}). Without network "
            f"(or with HF_HUB_OFFLINE=1 and no cached copy) download it on a machine with network:\n"
            f"  hf download {repo_id} {filename}{rev} --local-dir CKPT\n"
            f"then pass --checkpoint CKPT/{filename} (with --config for a reference step_N file)") from None


def read_registry(path: Path = REGISTRY_PATH) -> dict[str, dict[str, Any]]:
    """{name: raw entry} from pretrained/registry.json."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    entries = data.get("checkpoints", {}) if isinstance(data, dict) else {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


def _registry_entry(name: str, registry: dict[str, dict[str, Any]]) -> tuple[str, Any]:
    """(spec, config) for a registry entry (the format trm_core.registry reads): a local `path`
    (relative to pretrained/) or `hub_repo` + `filename` [+ `revision`]. The arch config is the
    entry's preset dict, which trm_core resolves from the registry name itself."""
    entry = registry[name]
    config = entry.get("config") if isinstance(entry.get("config"), str) else name
    if entry.get("path"):
        p = Path(entry["path"])
        return str(p if p.is_absolute() else REGISTRY_PATH.parent / p), config
    repo, filename, revision = entry.get("hub_repo"), entry.get("filename"), entry.get("revision")
    if not repo or not filename:
        raise BundleError(f"{REGISTRY_PATH}: entry {name!r} needs hub_repo and filename (or a local path)")
    return f"hf:{repo}/{filename}" + (f"@{revision}" if revision else ""), config


def _convert(src: Path, config: Any, out_dir: Path, source_name: str) -> Path:
    try:
        from trm_core.checkpoint import convert
    except ImportError as e:
        raise BundleError(f"converting {src} needs trm_core.checkpoint.convert ({e}); pass a kit checkpoint "
                          "directory (manifest.json + model.safetensors) instead") from None
    try:
        return Path(convert(src, config, out_dir, source_name=source_name))
    except ValueError as e:  # CheckpointError: unknown config, shape mismatch; its message names the fix
        raise BundleError(str(e)) from None


def resolve_checkpoint(spec: str, cache_dir: Path, config: Any = None,
                       registry: dict[str, dict[str, Any]] | None = None) -> ResolvedCheckpoint:
    """A slim kit checkpoint directory for `spec` (see the module docstring); converted into cache_dir."""
    registry = read_registry() if registry is None else registry
    if spec in registry and not Path(spec).exists():
        spec_from_registry, reg_config = _registry_entry(spec, registry)
        config = config if config is not None else reg_config
        try:
            return resolve_checkpoint(spec_from_registry, cache_dir, config, {})
        except BundleError as e:
            raise BundleError(f"registry checkpoint {spec!r}: {e}" +
                              (f" --config {config}" if isinstance(config, str) else "")) from None
    if spec.startswith("hf:"):
        repo_id, filename, revision = parse_hub_spec(spec)
        local = hub_download(repo_id, filename, revision)
        if local.name == "manifest.json":
            sibling = filename.rsplit("/", 1)[0] + "/model.safetensors" if "/" in filename else "model.safetensors"
            weights = hub_download(repo_id, sibling, revision)
            if weights.parent != local.parent:
                raise BundleError(f"{spec}: manifest.json and model.safetensors resolved to different folders")
            local = local.parent
        source = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
        resolved = _resolve_local(local, cache_dir, config, source)
        if resolved.path == local:  # the hub cache's files link to its blobs/ folder
            return ResolvedCheckpoint(resolved.path, source, resolved.source_bytes, _hub_repo_root(local))
        return resolved
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(sorted(registry)) or "none (pretrained/registry.json is missing)"
        raise BundleError(f"checkpoint {spec!r} is not a file, a kit directory, an hf:owner/repo/file id, "
                          f"or a registry name (known: {names})")
    return _resolve_local(path.resolve(), cache_dir, config, str(path))


def _resolve_local(path: Path, cache_dir: Path, config: Any, source: str) -> ResolvedCheckpoint:
    size = dir_bytes(path)
    if is_kit_dir(path):
        from trm_core import jsonio  # standard library only: the rules every manifest is read by

        try:
            manifest = jsonio.load(path / "manifest.json")
        except (jsonio.JSONInputError, OSError) as e:
            raise BundleError(f"{path / 'manifest.json'} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{path / 'manifest.json'} is not a kit manifest: expected a JSON object, "
                              f"got {type(manifest).__name__}")
        if manifest.get("slim") is True:
            return ResolvedCheckpoint(path, source, size)
        return ResolvedCheckpoint(_convert(path, None, cache_dir / "checkpoint", source), source, size)
    if path.is_dir():
        raise BundleError(f"{path} is a folder but not a kit checkpoint: it needs manifest.json and model.safetensors")
    if config is None and not (path.parent / "all_config.yaml").is_file():  # a run folder carries its own
        raise BundleError(f"{path} is a reference checkpoint file: pass its arch config with --config "
                          "(a preset name such as 'paper' or 'hrm', or a config file from its training run)")
    return ResolvedCheckpoint(_convert(path, config, cache_dir / "checkpoint", source), source, size)


def _hub_repo_root(path: Path) -> Path:
    """models--owner--repo/ above a hub cache snapshot path (its snapshots/ link into its blobs/)."""
    for parent in path.parents:
        if parent.name == "snapshots":
            return parent.parent
    return path


def copy_checkpoint(ckpt: ResolvedCheckpoint, dest: Path) -> None:
    """Copy the kit files into dest as plain files. A file that is a symbolic link pointing out of
    its checkpoint folder (or, for the hub, out of the cached repo) is refused: a link named
    model.safetensors can stand for any file on this machine, a key file included."""
    root = Path(os.path.realpath(ckpt.link_root or ckpt.path))
    dest.mkdir(parents=True, exist_ok=True)
    for name in KIT_FILES:
        src = ckpt.path / name
        if src.is_symlink():
            target = Path(os.path.realpath(src))
            if root not in target.parents:
                raise BundleError(f"{src} is a symbolic link to {target}, outside the checkpoint folder {root}: "
                                  "refusing to ship it; copy the real checkpoint file there instead")
        shutil.copyfile(src, dest / name)


MAX_CANVAS = 30  # ARC grids are at most 30x30, and so is a prediction record (trm_core.predictions)


def check_shippable(path: Path) -> str:
    """Load the slim checkpoint as the notebook will (manifest rules, saved config, dtypes, finite
    values, shapes, weights' sha256), refuse a canvas above 30, and run one forward step on one
    row (finite logits and q-head outputs of the right shapes); a BundleError says what is broken.
    Returns a one-line summary."""
    import torch

    from trm_core import checkpoint

    try:
        ckpt = checkpoint.load(path)
    except (checkpoint.CheckpointError, OSError) as e:
        raise BundleError(f"the checkpoint to ship does not load: {e}") from None
    if not ckpt.slim:
        raise BundleError(f"{path}: the checkpoint to ship still holds its per-variant table (not slim)")
    cfg = ckpt.config
    if cfg.canvas > MAX_CANVAS:
        # a larger board lets the model answer with a grid over 30x30, which no prediction record
        # holds: the notebook's prediction shards would fail on it
        raise BundleError(f"{path}: canvas {cfg.canvas} is larger than ARC's 30x30 grids and cannot be predicted "
                          f"with; ship a checkpoint trained at canvas <= {MAX_CANVAS}")
    try:
        model = checkpoint.build_model(ckpt, num_puzzle_identifiers=2).eval()
        S = cfg.seq_len
        batch = {"inputs": torch.full((1, S), 2, dtype=torch.int32), "labels": torch.zeros(1, S, dtype=torch.int32),
                 "puzzle_identifiers": torch.ones(1, dtype=torch.int32)}
        with torch.inference_mode():
            _, out = model(model.initial_carry(batch), batch)
        logits = out["logits"].float()  # (1, S, vocab)
        q_halt = out["q_halt_logits"].float()  # (1,): the vote weighs views by it
    except Exception as e:  # noqa: BLE001 - whatever breaks here would break the notebook
        raise BundleError(f"{path}: the checkpoint loads but a forward pass fails: {type(e).__name__}: {e}") from None
    for name, value, want in (("logits", logits, [1, S, cfg.vocab_size]), ("q_halt_logits", q_halt, [1])):
        finite = bool(torch.isfinite(value).all())
        if list(value.shape) != want or not finite:
            raise BundleError(f"{path}: a forward pass gives {name} of shape {list(value.shape)} "
                              f"{'with' if not finite else 'without'} non-finite values; expected {want}, all finite")
    return f"hidden {cfg.hidden_size}, canvas {cfg.canvas}, forward pass on one row ok"
