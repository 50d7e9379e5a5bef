"""Checkpoints: reading reference `step_N` files, the kit format, slimming and resizing.

The kit format is a directory holding `model.safetensors` (the state dict with the reference's
module names, no prefix) and `manifest.json` (arch config, embedding-row names when known,
provenance, which weights are EMA, sha256 of the weights). A *slim* checkpoint drops the
per-variant puzzle-embedding table and keeps its mean and per-column std rows
(`puzzle_emb.mean`, `puzzle_emb.std`), which is all post-training on new tasks needs.
Loading always works on CPU; reference pickles are read with `weights_only=True`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from trm_core import __version__, jsonio
from trm_core.model import TRM, TRMConfig
from trm_core.safe_io import atomic_path, sha256_file, write_atomic

REFERENCE_PREFIXES = ("_orig_mod.model.inner.", "model.inner.")
TABLE_KEY = "puzzle_emb.weights"
MEAN_KEY, STD_KEY = "puzzle_emb.mean", "puzzle_emb.std"
WEIGHTS_FILE, MANIFEST_FILE = "model.safetensors", "manifest.json"
FORMAT = "trm-kit-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its config; the message names the fix."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: config, tensors (CPU) and manifest."""

    config: TRMConfig
    state: dict[str, torch.Tensor]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def slim(self) -> bool:
        return TABLE_KEY not in self.state

    def mean_row(self) -> torch.Tensor:
        if MEAN_KEY in self.state:
            return self.state[MEAN_KEY]
        return self.state[TABLE_KEY].float().mean(0)

    def std_row(self) -> torch.Tensor:
        if STD_KEY in self.state:
            return self.state[STD_KEY]
        return _column_std(self.state[TABLE_KEY].float())


def _column_std(table: torch.Tensor) -> torch.Tensor:
    """Per-column std of a [rows, D] table; zeros for one row (the sample std of one value is NaN,
    which no floor removes, and would make every row drawn from it NaN)."""
    return table.std(0) if table.shape[0] > 1 else torch.zeros_like(table[0])


# ---- arch configs from files ---------------------------------------------------------------


def _scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in "'\"" and text[-1:] == text[:1]:
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_simple_yaml(text: str) -> dict[str, Any]:
    """Block-style mappings of scalars and lists, as yaml.dump writes all_config.yaml."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, Any]] = [(-1, root)]  # (indent of the container's entries, container)
    pending: tuple[dict, str, int] | None = None  # a "key:" whose value starts on the next line
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent, line = len(raw) - len(raw.lstrip(" ")), raw.strip()
        if pending is not None:
            owner, key, key_indent = pending
            pending = None
            if line.startswith("- ") and indent >= key_indent:
                owner[key] = []
            elif indent > key_indent:
                owner[key] = {}
            else:
                owner[key] = None
            if owner[key] is not None:
                stack.append((indent, owner[key]))
        while stack[-1][0] > indent:
            stack.pop()
        if isinstance(stack[-1][1], list) and not line.startswith("- "):
            stack.pop()
        top = stack[-1][1]
        if line.startswith("- "):
            top.append(_scalar(line[2:]))
            continue
        key, _, value = line.partition(":")
        if value.strip():
            top[key.strip()] = _scalar(value)
        else:
            pending = (top, key.strip(), indent)
    if pending is not None:
        pending[0][pending[1]] = None
    return root


def read_config_file(path: str | os.PathLike) -> TRMConfig:
    """Arch config from JSON (ours or the reference's) or YAML (all_config.yaml / arch/trm.yaml)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CheckpointError(f"cannot read config {path}: {e.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # optional: present on most images; the fallback parser covers ours

                data = yaml.safe_load(text)
            except ImportError:
                data = _parse_simple_yaml(text)
        else:
            data = jsonio.loads(text, str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure becomes one clear message
        raise CheckpointError(f"{path} is not a valid config file: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a mapping of arch fields")
    if "config" in data:  # our manifest: complete or refused
        return manifest_config(data, str(path))
    try:
        cfg = TRMConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    arch = data.get("arch", data)
    missing = [name for name in REFERENCE_REQUIRED if not isinstance(arch, dict) or name not in arch]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)}; the reference has no default for them, "
                              "so neither does trm-kit: add them from the training run's config")
    return cfg


# fields the reference's arch config has no default for (the rest default as the reference does,
# or come from the data: vocab_size, seq_len)
REFERENCE_REQUIRED = ("hidden_size", "num_heads", "expansion", "H_cycles", "L_cycles", "L_layers",
                      "puzzle_emb_ndim", "halt_max_steps")


# ---- reading ------------------------------------------------------------------------------


def _named_config(name: str) -> TRMConfig:
    """A preset name ("paper", "trelis-emb1", "tiny") or a registry name ("trelis-arc-agi-2")."""
    from trm_core.model import PRESETS
    from trm_core.registry import load_registry

    if name in PRESETS:
        return TRMConfig.from_name(name)
    try:
        registry = load_registry()
    except (FileNotFoundError, ValueError):
        registry = {}
    if name in registry:
        return registry[name].config
    raise CheckpointError(f"config {name!r} is neither a file, a preset ({', '.join(sorted(PRESETS))}) nor a "
                          f"registry name ({', '.join(sorted(registry)) or 'no registry found'})")


def read_reference(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a reference `step_N` file, keys without the compile/wrapper prefix.

    Pickles that need code to load are refused, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch checkpoint (expected the zip format torch.save writes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the table stays on disk until read
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} needs code to load and was refused (only plain tensors are read): {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} could not be read as a torch checkpoint: {e}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    state = {}
    for key, value in obj.items():
        for prefix in REFERENCE_PREFIXES:
            if key.startswith(prefix):
                state[key[len(prefix):]] = value
                break
        else:
            raise CheckpointError(
                f"{path}: key {key!r} lacks the reference prefix ({' or '.join(REFERENCE_PREFIXES)}); "
                "is this a TRM or HRM checkpoint?")
    return state


def expected_shapes(cfg: TRMConfig) -> dict[str, tuple[int, ...]]:
    model = TRM(cfg) if cfg.num_puzzle_identifiers <= 1 else TRM(cfg.with_(num_puzzle_identifiers=1))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(state: dict[str, torch.Tensor], cfg: TRMConfig, source: str) -> None:
    """Every key present with the shape the config implies; the table may have any row count."""
    want = expected_shapes(cfg)
    lora = {k for k in state if ".lora_" in k}
    optional = {TABLE_KEY, MEAN_KEY, STD_KEY}
    missing = sorted(k for k in want if k not in state and k not in optional)
    extra = sorted(k for k in state if k not in want and k not in optional and k not in lora)
    if missing or extra:
        hrm_keys = any(k.startswith("H_level.") for k in state)
        if hrm_keys != (cfg.architecture == "hrm"):
            kind, want_arch = ("an HRM", "an HRM config (preset 'hrm' or the run's all_config.yaml)") if hrm_keys \
                else ("a TRM", "a TRM config (preset 'paper', 'trelis-emb1' or the run's all_config.yaml)")
            raise CheckpointError(f"{source} holds {kind} (H_level {'present' if hrm_keys else 'absent'}) but the "
                                  f"config is architecture {cfg.architecture!r}: pass {want_arch}")
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        raise CheckpointError(f"{source} does not fit the config: " + "; ".join(parts))
    for k, shape in want.items():
        if k not in state:
            continue
        got = tuple(state[k].shape)
        if k == TABLE_KEY:
            if got[1:] != shape[1:]:
                raise CheckpointError(f"{source}: {k} has shape {list(got)}, config wants [N, {shape[1]}] "
                                      f"(puzzle_emb_ndim={cfg.puzzle_emb_ndim})")
        elif got != shape:
            raise CheckpointError(f"{source}: {k} has shape {list(got)} but the config implies {list(shape)}; "
                                  "check hidden_size / num_heads / expansion / L_layers / H_layers")
    if TABLE_KEY not in state and MEAN_KEY not in state and cfg.puzzle_emb_ndim > 0:
        raise CheckpointError(f"{source} has neither {TABLE_KEY} nor {MEAN_KEY}")


def load(path: str | os.PathLike, config: TRMConfig | str | os.PathLike | None = None,
         verify: bool = True) -> Checkpoint:
    """Load a kit checkpoint directory, or a reference `step_N` file with its arch config.

    `config` is a TRMConfig, a preset name, or a JSON/YAML file; a kit directory carries its own.
    Without one, a reference file takes the `all_config.yaml` its training run wrote beside it
    (as the references' own evaluate.py does; sapientinc's HRM releases ship it with `checkpoint`).
    verify=False skips the kit weights' sha256 check (for a bundle whose files were verified).
    """
    path = Path(path)
    if path.is_dir():
        return _load_kit(path, verify)
    if config is None and (path.parent / "all_config.yaml").is_file():
        config = path.parent / "all_config.yaml"
    if config is None:
        raise CheckpointError(f"{path} is a reference checkpoint: pass its arch config (--config FILE or a "
                              "preset such as 'paper', 'trelis-emb1' or 'hrm'), or put the run's all_config.yaml "
                              "beside it; puzzle_emb_len cannot be read from weights")
    if isinstance(config, TRMConfig):
        cfg = config
    elif isinstance(config, str) and not Path(config).exists():
        cfg = _named_config(config)
    else:
        cfg = read_config_file(config)
    state = read_reference(path)
    table = state.get(TABLE_KEY)
    if table is not None:
        cfg = cfg.with_(num_puzzle_identifiers=table.shape[0])
    check_state(state, cfg, str(path))
    manifest = {"provenance": {"source": str(path), "source_sha256": sha256_file(path), "format": "reference"}}
    return Checkpoint(cfg, state, manifest)


def _load_kit(path: Path, verify: bool = True) -> Checkpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    manifest_path, weights_path = path / MANIFEST_FILE, path / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{path} is not a kit checkpoint: it needs {MANIFEST_FILE} and {WEIGHTS_FILE}")
    manifest = read_manifest(manifest_path)
    cfg = manifest_config(manifest, str(manifest_path))
    if verify:
        verify_weights(manifest, weights_path)
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(weights_path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {e}") from None
    check_weights_config(meta, cfg, str(weights_path))
    check_state(state, cfg, str(weights_path))
    return Checkpoint(cfg, state, manifest)


# ---- manifest rules -------------------------------------------------------------------------
# A manifest is complete or refused: every arch field present (a default would silently change
# the model), the config the weights were saved with (safetensors metadata) the same, and the
# weights' sha256 the one recorded. Loading inside a bundle already verified file by file can skip
# the hash (verify=False).

ARCH_FIELDS = tuple(f.name for f in fields(TRMConfig))
CONFIG_META_KEY = "trm_config"  # safetensors metadata: the config as JSON, written by save()


def read_manifest(manifest_path: str | os.PathLike) -> dict[str, Any]:
    """manifest.json as a dict, read by the rules of trm_core.jsonio."""
    try:
        manifest = jsonio.load(manifest_path)
    except jsonio.JSONInputError as e:
        raise CheckpointError(f"{manifest_path} is not a valid manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path} is not a valid manifest: expected a JSON object, "
                              f"got {type(manifest).__name__}")
    return manifest


def manifest_config(manifest: dict[str, Any], where: str) -> TRMConfig:
    """The manifest's arch config; every field of TRMConfig must be there."""
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} is not a valid manifest: 'config' must be an object of arch fields, "
                              f"got {type(config).__name__}")
    missing = [name for name in ARCH_FIELDS if name not in config]
    if missing:
        raise CheckpointError(f"{where}: config lacks {', '.join(missing)}; a manifest must give every arch "
                              "field (a default would change the model): add them from the training run")
    try:
        return TRMConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} is not a valid manifest: {e}") from None


def verify_weights(manifest: dict[str, Any], weights_path: Path) -> None:
    """The weights file's sha256 is the manifest's weights_sha256."""
    want = manifest.get("weights_sha256")
    if not isinstance(want, str) or not want:
        raise CheckpointError(f"{weights_path.parent / MANIFEST_FILE}: weights_sha256 is missing; the weights "
                              "cannot be checked (write the checkpoint with trm_core.checkpoint.save)")
    got = sha256_file(weights_path)
    if got != want:
        raise CheckpointError(f"{weights_path}: weights_sha256 is {got}, the manifest says {want}: the weights "
                              "were changed or damaged after the manifest was written")


def check_weights_config(meta: dict[str, str], cfg: TRMConfig, source: str) -> None:
    """The config saved inside the weights file (when there) agrees with the manifest, field by field."""
    if CONFIG_META_KEY not in meta:
        return  # written before the config was recorded in the weights
    try:
        saved = json.loads(meta[CONFIG_META_KEY])
    except ValueError:
        raise CheckpointError(f"{source}: its {CONFIG_META_KEY} metadata is not valid JSON") from None
    want = cfg.to_dict()
    for name in ARCH_FIELDS:
        if name == "num_puzzle_identifiers" or name not in saved:
            continue
        if saved[name] != want[name]:
            raise CheckpointError(f"{source}: {name} is {saved[name]!r} in the weights but {want[name]!r} in the "
                                  f"manifest; correct {name} in manifest.json")


# ---- writing ------------------------------------------------------------------------------


def save(ckpt: Checkpoint, out_dir: str | os.PathLike) -> Path:
    """Write `model.safetensors` and `manifest.json` into out_dir (created); returns out_dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in ckpt.state.items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={CONFIG_META_KEY: json.dumps(ckpt.config.to_dict())})
    manifest = dict(ckpt.manifest)
    manifest.update({"format": FORMAT, "config": ckpt.config.to_dict(), "slim": ckpt.slim,
                     "weights_sha256": sha256_file(out / WEIGHTS_FILE), "trm_kit_version": __version__})
    write_atomic(out / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return out


def slim(ckpt: Checkpoint) -> Checkpoint:
    """Drop the per-variant table, keeping its mean and per-column std (fp32 rows of width D)."""
    if ckpt.slim:
        return ckpt
    state = {k: v for k, v in ckpt.state.items() if k != TABLE_KEY}
    table = ckpt.state[TABLE_KEY].float()
    state[MEAN_KEY], state[STD_KEY] = table.mean(0), _column_std(table)
    manifest = dict(ckpt.manifest)
    manifest["puzzle_emb_rows_dropped"] = int(table.shape[0])
    manifest.pop("identifiers", None)
    return Checkpoint(ckpt.config.with_(num_puzzle_identifiers=1), state, manifest)


def convert(src: str | os.PathLike, config: TRMConfig | str | os.PathLike | None, out_dir: str | os.PathLike,
            slim_table: bool = True, ema: bool | None = None, source_name: str | None = None) -> Path:
    """Reference or kit checkpoint -> kit directory (slim by default). Returns out_dir."""
    ckpt = load(src, config)
    prov = dict(ckpt.manifest.get("provenance", {}))
    prov.update({"converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "converted_by": f"trm-kit {__version__}"})
    if source_name:
        prov["source_name"] = source_name
    ckpt.manifest["provenance"] = prov
    if ema is not None:
        ckpt.manifest["weights"] = "ema" if ema else "raw"
    ckpt.manifest.setdefault("weights", "unknown")
    if slim_table:
        ckpt = slim(ckpt)
    return save(ckpt, out_dir)


# ---- building models ----------------------------------------------------------------------


def resize_table(ckpt: Checkpoint, rows: int, init: str = "mean",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh [rows, D] puzzle-embedding table for a new task set.

    init="mean": every row the checkpoint's mean row (the reference and Trelis default);
    init="normal": N(mean, std) per column, std floored at 1e-6.
    """
    mean = ckpt.mean_row().float()
    if init == "mean":
        return mean.expand(rows, -1).clone()
    if init == "normal":
        std = ckpt.std_row().float().clamp_min(1e-6)
        noise = torch.randn(rows, mean.shape[0], generator=generator)
        return mean + noise * std
    raise ValueError(f"init must be 'mean' or 'normal', got {init!r}")


def build_model(ckpt: Checkpoint, num_puzzle_identifiers: int | None = None, init: str = "mean",
                generator: torch.Generator | None = None) -> TRM:
    """A model (TRM or HRM, as the checkpoint's config says) holding the checkpoint's weights.

    With `num_puzzle_identifiers` (post-training on new tasks) the table is rebuilt with that
    many rows by `resize_table`; otherwise the checkpoint's own table is used (it must have one).
    """
    cfg = ckpt.config
    rows = num_puzzle_identifiers
    if rows is None:
        if ckpt.slim and cfg.puzzle_emb_ndim > 0:
            raise CheckpointError("this checkpoint is slim (no per-variant table): give num_puzzle_identifiers "
                                  "to build a table for your tasks")
        rows = ckpt.state[TABLE_KEY].shape[0] if TABLE_KEY in ckpt.state else 1
    model = TRM(cfg.with_(num_puzzle_identifiers=rows))
    state = {k: v for k, v in ckpt.state.items() if k not in (MEAN_KEY, STD_KEY)}
    if cfg.puzzle_emb_ndim > 0 and (num_puzzle_identifiers is not None or TABLE_KEY not in state):
        state[TABLE_KEY] = resize_table(ckpt, rows, init, generator)
    elif TABLE_KEY not in state:
        state[TABLE_KEY] = model.puzzle_emb.weights
    if any(".lora_" in k for k in state):
        raise CheckpointError("this checkpoint holds LoRA adapters: merge them before loading as a plain model")
    want = model.state_dict()
    for k, v in want.items():
        if k in state and state[k].dtype != v.dtype:
            state[k] = state[k].to(v.dtype)
    model.load_state_dict(state, strict=True)
    return model


def from_model(model: TRM, manifest: dict[str, Any] | None = None) -> Checkpoint:
    """Snapshot a model as a Checkpoint on CPU; LoRA adapters are folded into the weights."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    for name, m in model.named_modules():
        if getattr(m, "lora_A", None) is not None:
            delta = m.lora_scale * (m.lora_B.detach() @ m.lora_A.detach()).to("cpu")
            state[f"{name}.weight"] = state[f"{name}.weight"] + delta.to(state[f"{name}.weight"].dtype)
    return Checkpoint(model.config, state, dict(manifest or {}))
