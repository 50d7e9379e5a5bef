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

Resolution is trm_core.hub's, the one every `trm` command uses. Conversion is
`trm_core.checkpoint.convert(src, config, out_dir)` (slim by default), imported only when a
conversion is needed; a kit directory that is already slim is used as it is. A registry entry's
recipe (optimiser variant, EMA, puzzle_emb_len) is written into the shipped manifest when the
checkpoint records none, and the bundle manifest repeats it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import BundleError
from trm_core import hub
from trm_core.config import Recipe, RecipeError, of_manifest, of_registry

KIT_FILES = ("manifest.json", "model.safetensors")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path  # slim kit checkpoint directory
    source: str  # what the spec resolved to (local path, or hub repo/file@revision)
    source_bytes: int  # size of the source before slimming
    link_root: Path | None = None  # symlinks may point inside this folder (the hub cache's repo); None: path
    recipe: Recipe | None = None  # a registry entry's, recorded by copy_checkpoint when the manifest has none


def is_kit_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in KIT_FILES)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def parse_hub_spec(spec: str) -> tuple[str, str, str | None]:
    """'hf:owner/repo/dir/file.pt@rev' -> ('owner/repo', 'dir/file.pt', 'rev') (trm_core.hub's)."""
    try:
        return hub.parse_hub_spec(spec)
    except hub.SourceError as e:
        raise BundleError(str(e)) from None


def read_registry(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: raw entry} from pretrained/registry.json (trm_core.hub reads it for every command)."""
    try:
        return hub.read_registry(path)
    except hub.SourceError as e:
        raise BundleError(str(e)) from None


def _convert(src: Path, config: Any, out_dir: Path, source_name: str, recipe: Recipe | None = None) -> Path:
    try:
        from trm_core.checkpoint import convert
    except ImportError as e:
        raise BundleError(f"converting {src} needs trm_core.checkpoint.convert ({e}); pass a kit checkpoint "
                          "directory (manifest.json + model.safetensors) instead") from None
    try:
        if isinstance(config, dict):  # a registry entry's {"preset": ..., overrides}
            from trm_core.hub import entry_config

            config = entry_config(source_name, {"config": config})
        return Path(convert(src, config, out_dir, source_name=source_name, recipe=recipe))
    except ValueError as e:  # CheckpointError: unknown config, shape mismatch; its message names the fix
        raise BundleError(str(e)) from None


def resolve_checkpoint(spec: str, cache_dir: Path, config: Any = None,
                       registry: dict[str, dict[str, Any]] | None = None) -> ResolvedCheckpoint:
    """A slim kit checkpoint directory for `spec` (see the module docstring); converted into cache_dir.
    A registry name brings its arch config (unless `config` is given) and its recipe, written into
    the converted checkpoint's manifest."""
    registry_given = registry is not None
    registry = read_registry() if registry is None else registry
    try:
        found = hub.locate(spec, registry)
    except hub.SourceError as e:
        named = spec in registry and not Path(spec).exists()
        raise BundleError(str(e) + (f" --config {config or spec}" if named else "")) from None
    recipe = None
    if found.entry is not None:
        reg_config = found.entry.get("config")
        if reg_config is not None and not isinstance(reg_config, (str, dict)):
            raise BundleError(f"registry checkpoint {spec!r}: its config must be a preset name, a config file or an "
                              f"object such as {{\"preset\": \"paper\"}}, got {type(reg_config).__name__}")
        config = config if config is not None else reg_config
        try:
            recipe = of_registry(found.name, found.entry,
                                 registry="the registry" if registry_given else str(hub.registry_path()))
        except RecipeError as e:
            raise BundleError(str(e)) from None
    try:
        resolved = _resolve_local(found.path, cache_dir, config, found.source, recipe)
    except BundleError as e:
        if found.entry is None:
            raise
        raise BundleError(f"registry checkpoint {spec!r}: {e}" +
                          (f" --config {config}" if isinstance(config, str) else "")) from None
    if found.link_root is not None and resolved.path == found.path:  # the hub cache's files link to its blobs/
        return ResolvedCheckpoint(resolved.path, found.source, resolved.source_bytes, found.link_root, recipe)
    return ResolvedCheckpoint(resolved.path, resolved.source, resolved.source_bytes, None, recipe)


def _resolve_local(path: Path, cache_dir: Path, config: Any, source: str,
                   recipe: Recipe | None = None) -> ResolvedCheckpoint:
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
        return ResolvedCheckpoint(_convert(path, None, cache_dir / "checkpoint", source, recipe), source, size)
    if path.is_dir():
        raise BundleError(f"{path} is a folder but not a kit checkpoint: it needs manifest.json and model.safetensors")
    if config is None and not (path.parent / "all_config.yaml").is_file():  # a run folder carries its own
        raise BundleError(f"{path} is a reference checkpoint file: pass its arch config with --config "
                          "(a preset name such as 'paper' or 'hrm', or a config file from its training run)")
    return ResolvedCheckpoint(_convert(path, config, cache_dir / "checkpoint", source, recipe), source, size)


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
    _record_recipe(dest / "manifest.json", ckpt.recipe)


def _record_recipe(manifest_path: Path, recipe: Recipe | None) -> None:
    """Write the registry's recipe into a shipped manifest that records none (a slim kit checkpoint
    taken as it is): the notebook post-trains with the variant the weights were trained with."""
    from trm_core import jsonio

    if recipe is None:
        return
    try:
        manifest = jsonio.load(manifest_path)
    except (jsonio.JSONInputError, OSError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON: {e}") from None
    try:
        own = of_manifest(manifest, str(manifest_path)) if isinstance(manifest, dict) else None
    except RecipeError as e:
        raise BundleError(f"the checkpoint to ship has a bad recipe: {e}") from None
    if own is not None and own.optimizer != recipe.optimizer:
        raise BundleError(f"{manifest_path}: the checkpoint says it was trained with {own.optimizer} ({own.source}) "
                          f"but {recipe.source} says {recipe.optimizer}: correct the registry entry, or bundle the "
                          "checkpoint folder itself")
    if own is not None or not isinstance(manifest, dict):
        return  # the checkpoint's own word (check_shippable refuses a manifest that is not an object)
    config = manifest.get("config")
    length = config.get("puzzle_emb_len") if isinstance(config, dict) else None
    if recipe.puzzle_emb_len is not None and isinstance(length, int) and length != recipe.puzzle_emb_len:
        raise BundleError(f"{manifest_path}: config.puzzle_emb_len is {length} but {recipe.source} says "
                          f"{recipe.puzzle_emb_len}: this is not the checkpoint the registry describes")
    manifest["recipe"] = {**recipe.to_json(), "puzzle_emb_len": length if isinstance(length, int) else None}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")


def shipped_recipe(checkpoint_dir: Path) -> dict[str, Any] | str:
    """The recipe the shipped checkpoint records, for the bundle manifest ("unknown" when none)."""
    from trm_core import jsonio

    try:
        recipe = of_manifest(jsonio.load(checkpoint_dir / "manifest.json"), str(checkpoint_dir / "manifest.json"))
    except (jsonio.JSONInputError, OSError, RecipeError) as e:
        raise BundleError(f"the checkpoint to ship has an unreadable manifest: {e}") from None
    return recipe.to_json() if recipe else "unknown"


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
