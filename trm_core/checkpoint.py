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
import difflib
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from trm_core import __version__, jsonio
from trm_core.config import Recipe, RecipeError, of_manifest
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
    from trm_core.config import PRESETS
    from trm_core.hub import load_registry

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
    check_tensors(state, str(path), READ_DTYPES)
    return state


def expected_shapes(cfg: TRMConfig) -> dict[str, tuple[int, ...]]:
    model = TRM(cfg) if cfg.num_puzzle_identifiers <= 1 else TRM(cfg.with_(num_puzzle_identifiers=1))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_architecture(state: dict[str, torch.Tensor], cfg: TRMConfig, source: str) -> None:
    """HRM weights (an H_level stack) with an HRM config, TRM weights with a TRM one."""
    hrm_keys = any(k.startswith("H_level.") for k in state)
    if hrm_keys != (cfg.architecture == "hrm"):
        kind, want_arch = ("an HRM", "an HRM config (preset 'hrm' or the run's all_config.yaml)") if hrm_keys \
            else ("a TRM", "a TRM config (preset 'paper', 'trelis-emb1' or the run's all_config.yaml)")
        raise CheckpointError(f"{source} holds {kind} (H_level {'present' if hrm_keys else 'absent'}) but the "
                              f"config is architecture {cfg.architecture!r}: pass {want_arch}")


def check_state(state: dict[str, torch.Tensor], cfg: TRMConfig, source: str) -> None:
    """Every key present with the shape the config implies; the table may have any row count."""
    want = expected_shapes(cfg)
    lora = {k for k in state if ".lora_" in k}
    optional = {TABLE_KEY, MEAN_KEY, STD_KEY}
    missing = sorted(k for k in want if k not in state and k not in optional)
    extra = sorted(k for k in state if k not in want and k not in optional and k not in lora)
    if missing or extra:
        check_architecture(state, cfg, source)
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
         verify: bool = True, trust_manifest: bool = False) -> Checkpoint:
    """Load a kit checkpoint directory, or a reference `step_N` file with its arch config.

    `config` is a TRMConfig, a preset name, or a JSON/YAML file; a kit directory carries its own.
    Without one, a reference file takes the `all_config.yaml` its training run wrote beside it
    (as the references' own evaluate.py does; sapientinc's HRM releases ship it with `checkpoint`).
    verify=False skips the kit weights' sha256 check (for a bundle whose files were verified).
    trust_manifest=True accepts a kit checkpoint whose weights carry no saved config, taking the
    manifest's word for the fields no tensor shows (`trm convert` does, to write that config in).
    """
    path = Path(path)
    if path.is_dir():
        return _load_kit(path, verify, trust_manifest)
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
    check_fields_from_tensors(state, cfg, str(path))
    check_state(state, cfg, str(path))
    manifest = {"provenance": {"source": str(path), "source_sha256": sha256_file(path), "format": "reference"}}
    return Checkpoint(cfg, state, manifest)


def _metadata(weights_path: Path) -> dict[str, str]:
    """The safetensors header's metadata ({} when none); raises on an unreadable file."""
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as f:
        return f.metadata() or {}


def _load_kit(path: Path, verify: bool = True, trust_manifest: bool = False) -> Checkpoint:
    from safetensors.torch import load_file

    manifest_path, weights_path = path / MANIFEST_FILE, path / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{path} is not a kit checkpoint: it needs {MANIFEST_FILE} and {WEIGHTS_FILE}")
    manifest = read_manifest(manifest_path)
    cfg = manifest_config(manifest, str(manifest_path))
    if verify:
        verify_weights(manifest, weights_path)
    try:
        meta = _metadata(weights_path)
        state = load_file(weights_path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {e}") from None
    source = str(weights_path)
    # tensors first (dtype, finite, the fields they show, every shape), then the saved config for
    # the rest: a wrong shape is named by its field even in a file without metadata
    check_tensors(state, source, KIT_DTYPES)
    check_fields_from_tensors(state, cfg, source)
    check_state(state, cfg, source)
    if CONFIG_META_KEY in meta or not trust_manifest:
        check_weights_config(meta, cfg, source)
    else:
        manifest = dict(manifest)
        manifest["provenance"] = {**(manifest.get("provenance") if isinstance(manifest.get("provenance"), dict)
                                     else {}), "config_metadata": f"taken from manifest.json by trm-kit {__version__}"}
    return Checkpoint(cfg, state, manifest)


# ---- manifest rules -------------------------------------------------------------------------
# A manifest is complete or refused: every arch field present (a default would silently change
# the model), the config the weights were saved with (safetensors metadata) the same, and the
# weights' sha256 the one recorded. Loading inside a bundle already verified file by file can skip
# the hash (verify=False).

ARCH_FIELDS = tuple(f.name for f in fields(TRMConfig))
CONFIG_META_KEY = "trm_config"  # safetensors metadata: the config as JSON, written by save()
# Upper bounds far above any released checkpoint (paper: hidden 512, 3x4 cycles, 16 steps), so a
# huge integer is refused by name instead of allocating or looping for ever in the first forward.
FIELD_LIMITS = {"hidden_size": 65536, "num_heads": 4096, "H_cycles": 64, "L_cycles": 64, "L_layers": 64,
                "H_layers": 64, "puzzle_emb_ndim": 65536, "puzzle_emb_len": 256,
                "num_puzzle_identifiers": 2**31 - 1, "vocab_size": 65536, "canvas": 64, "halt_max_steps": 256}
_FIELD_TYPES = {f.name: str(f.type) for f in fields(TRMConfig)}  # "int", "float", "str"


def check_config_fields(config: dict[str, Any], where: str) -> None:
    """No unknown field (a typo such as H_cylces would leave the real field to a default, or be
    ignored), and every value of its field's type: int (not bool) within FIELD_LIMITS, a finite
    number, or a string."""
    for name in config:
        if name not in _FIELD_TYPES:
            close = difflib.get_close_matches(str(name), ARCH_FIELDS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (the fields: {', '.join(ARCH_FIELDS)})"
            raise CheckpointError(f"{where} has an unknown field {name!r}{hint}")
    for name, value in config.items():
        kind = _FIELD_TYPES[name]
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            if ok and not 0 <= value <= FIELD_LIMITS.get(name, 2**31 - 1):
                raise CheckpointError(f"{where}: {name}={value} is outside 0..{FIELD_LIMITS.get(name, 2**31 - 1)}")
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            want = {"int": "an integer", "float": "a finite number"}.get(kind, "a string")
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise CheckpointError(f"{where}: {name} must be {want}, got {shown}")




def read_manifest(manifest_path: str | os.PathLike) -> dict[str, Any]:
    """manifest.json as a dict, read by the rules of trm_core.jsonio."""
    try:
        manifest = jsonio.load(manifest_path)
    except jsonio.JSONInputError as e:
        raise CheckpointError(f"{manifest_path} is not a valid manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path} is not a valid manifest: expected a JSON object, "
                              f"got {type(manifest).__name__}")
    manifest_recipe(manifest, str(manifest_path))  # a recipe, when recorded, is complete or refused
    return manifest


def manifest_recipe(manifest: dict[str, Any], where: str) -> Recipe | None:
    """The recipe the manifest records (see trm_core.config), None when unknown; a
    recorded one with an unknown field or a wrong value is refused by name."""
    try:
        recipe = of_manifest(manifest, where)
    except RecipeError as e:
        raise CheckpointError(str(e)) from None
    config = manifest.get("config")
    said = config.get("puzzle_emb_len") if isinstance(config, dict) else None
    if recipe is not None and recipe.puzzle_emb_len is not None and isinstance(said, int) \
            and recipe.puzzle_emb_len != said:
        raise CheckpointError(f"{where}: recipe.puzzle_emb_len is {recipe.puzzle_emb_len} but config.puzzle_emb_len "
                              f"is {said}; correct the one that is wrong")
    return recipe


def manifest_config(manifest: dict[str, Any], where: str) -> TRMConfig:
    """The manifest's arch config; every field of TRMConfig there, no other, each of its type."""
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} is not a valid manifest: 'config' must be an object of arch fields, "
                              f"got {type(config).__name__}")
    check_config_fields(config, f"{where}: config")
    missing = [name for name in ARCH_FIELDS if name not in config]
    if missing:
        raise CheckpointError(f"{where}: config lacks {', '.join(missing)}; a manifest must give every arch "
                              "field (a default would change the model): add them from the training run")
    try:
        # not from_dict: it translates reference configs (and forces a TRM's H_layers to 0), and a
        # manifest is ours, so every value is taken as written or refused
        return TRMConfig(**config)
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
    """The config saved inside the weights file agrees with `cfg` (the manifest's), field by field.

    The metadata must be there: it is the only witness for the fields no tensor shape shows
    (H_cycles, L_cycles, num_heads, puzzle_emb_len with RoPE, canvas with RoPE, halt_max_steps,
    forward_dtype, rope_theta, ...). `trm convert` rewrites a checkpoint that lacks it.
    """
    if CONFIG_META_KEY not in meta:
        raise CheckpointError(
            f"{source} has no {CONFIG_META_KEY!r} metadata, so the fields its tensors cannot show (H_cycles, "
            "L_cycles, num_heads, puzzle_emb_len, halt_max_steps, ...) cannot be checked against manifest.json: "
            f"if the manifest is right, rewrite the checkpoint with `trm convert {Path(source).parent} --out NEW_DIR`")
    where = f"{source}: its {CONFIG_META_KEY} metadata"
    try:
        saved = jsonio.loads(meta[CONFIG_META_KEY], where)
    except jsonio.JSONInputError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where} is not an object of arch fields")
    check_config_fields(saved, where)
    missing = [name for name in ARCH_FIELDS if name not in saved]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}: rewrite the checkpoint with `trm convert`")
    want = cfg.to_dict()
    for name in ARCH_FIELDS:
        if name == "num_puzzle_identifiers":  # the table's row count, checked against the tensors
            continue
        if saved[name] != want[name]:
            raise CheckpointError(f"{source}: {name} is {saved[name]!r} in the weights but {want[name]!r} in the "
                                  f"manifest; correct {name} in manifest.json")


# ---- what tensors show ----------------------------------------------------------------------
# Shapes and parameter names determine: hidden_size and vocab_size (the token embedding), the
# layer counts (L_level.layers.N / H_level.layers.N), the MLP width (expansion, up to the
# reference's rounding), puzzle_emb_ndim and the table's rows, the q-head ([2, hidden] + [2]),
# and with learned positions canvas**2 + puzzle_emb_len. num_heads is not among them (the fused
# qkv projection is [3 * hidden, hidden] for any head count): the saved config answers for it.
# Tensors are float32 in a kit checkpoint (save writes nothing else); a reference file may also
# hold bfloat16 or float16, widened exactly to float32 when converted. No value may be NaN or Inf.

KIT_DTYPES = (torch.float32,)
READ_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_FINITE_CHUNK = 1 << 22  # elements per check: a 2.4 GB table is scanned without a table-sized mask


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_tensors(state: dict[str, torch.Tensor], source: str, allowed: tuple[torch.dtype, ...]) -> None:
    """Every tensor of an allowed floating dtype and finite; the error names the tensor."""
    for key, t in state.items():
        if t.dtype not in allowed:
            raise CheckpointError(f"{source}: {key} is {_dtype_name(t.dtype)}; this checkpoint may hold "
                                  f"{' / '.join(_dtype_name(d) for d in allowed)} tensors only")
        flat = t.reshape(-1)
        for i in range(0, flat.numel(), _FINITE_CHUNK):
            if not bool(torch.isfinite(flat[i:i + _FINITE_CHUNK]).all()):
                raise CheckpointError(f"{source}: {key} holds NaN or Inf values; the weights are damaged "
                                      "(a diverged run?) and cannot predict: use an earlier checkpoint")


def _layer_count(state: dict[str, torch.Tensor], stack: str) -> int:
    prefix = f"{stack}.layers."
    found = [k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)]
    return max((int(n) + 1 for n in found if n.isdigit()), default=0)


def check_fields_from_tensors(state: dict[str, torch.Tensor], cfg: TRMConfig, source: str) -> None:
    """The arch fields the tensors determine (see above) are the config's, each named when not.

    Runs before any model is built from the config, so a hostile value (hidden_size 10**12)
    is refused here instead of allocating."""
    def refuse(key: str, name: str, said: Any, shown: Any) -> CheckpointError:
        shape = list(state[key].shape) if key in state else "its layer names"
        return CheckpointError(f"{source}: {key} has shape {shape} but the config implies {name}={said!r}; the "
                               f"weights say {name}={shown!r}: correct {name} in the config")

    def shape(key: str, ndim: int) -> tuple[int, ...] | None:
        t = state.get(key)
        return tuple(t.shape) if t is not None and t.dim() == ndim else None  # else check_state names it

    check_architecture(state, cfg, source)
    emb = shape("embed_tokens.embedding_weight", 2)
    if emb is not None:
        if emb[1] != cfg.hidden_size:
            raise refuse("embed_tokens.embedding_weight", "hidden_size", cfg.hidden_size, emb[1])
        if emb[0] != cfg.vocab_size:
            raise refuse("embed_tokens.embedding_weight", "vocab_size", cfg.vocab_size, emb[0])
    q = shape("q_head.weight", 2)
    if q is not None and q[0] != 2:
        raise CheckpointError(f"{source}: q_head.weight has shape {list(q)}; a q-head is [2, hidden_size] "
                              "(q_halt, q_continue): is this a TRM or HRM checkpoint?")
    for stack, name in (("L_level", "L_layers"), ("H_level", "H_layers")):
        n = _layer_count(state, stack)
        if n and n != getattr(cfg, name) and (stack == "L_level" or cfg.architecture == "hrm"):
            raise CheckpointError(f"{source}: the weights hold {n} blocks under {stack}.layers but the config "
                                  f"implies {name}={getattr(cfg, name)}: correct {name} in the config")
    gate_up = shape("L_level.layers.0.mlp.gate_up_proj.weight", 2)
    if gate_up is not None and gate_up[0] != 2 * cfg.intermediate_size:
        raise CheckpointError(f"{source}: L_level.layers.0.mlp.gate_up_proj.weight has shape {list(gate_up)} "
                              f"but the config implies {[2 * cfg.intermediate_size, gate_up[1]]} (expansion="
                              f"{cfg.expansion!r} gives an MLP width of {cfg.intermediate_size}, the weights' is "
                              f"{gate_up[0] // 2}): correct expansion in the config")
    table, mean = shape(TABLE_KEY, 2), shape(MEAN_KEY, 1)
    width = table[1] if table is not None else mean[0] if mean is not None else None
    if width is not None and width != cfg.puzzle_emb_ndim:
        raise refuse(TABLE_KEY if table is not None else MEAN_KEY, "puzzle_emb_ndim", cfg.puzzle_emb_ndim, width)
    if table is not None and table[0] != cfg.num_puzzle_identifiers:
        raise refuse(TABLE_KEY, "num_puzzle_identifiers", cfg.num_puzzle_identifiers, table[0])
    pos = shape("embed_pos.embedding_weight", 2)
    if pos is not None and cfg.pos_encodings == "learned" and pos[0] != cfg.total_len:
        raise CheckpointError(f"{source}: embed_pos.embedding_weight has {pos[0]} rows but the config implies "
                              f"canvas**2 + puzzle_emb_len = {cfg.canvas}**2 + {cfg.puzzle_emb_len} = "
                              f"{cfg.total_len}: correct canvas or puzzle_emb_len in the config")


# ---- writing ------------------------------------------------------------------------------


def save(ckpt: Checkpoint, out_dir: str | os.PathLike) -> Path:
    """Write `model.safetensors` and `manifest.json` into out_dir (created); returns out_dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # float32 only (see KIT_DTYPES): a reference's bfloat16/float16 tensors widen exactly
    state = {k: v.detach().to("cpu", torch.float32 if v.dtype in READ_DTYPES else v.dtype).contiguous()
             for k, v in ckpt.state.items()}
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


def _conversion_time() -> str:
    """Now, or SOURCE_DATE_EPOCH when set to a Unix time (reproducible builds: a bundle rebuilt from
    the same checkpoint ships the same bytes)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch.isdigit() and len(epoch) <= 11 \
        else _dt.datetime.now(_dt.timezone.utc)
    return when.isoformat(timespec="seconds")


def convert(src: str | os.PathLike, config: TRMConfig | str | os.PathLike | None, out_dir: str | os.PathLike,
            slim_table: bool = True, ema: bool | None = None, source_name: str | None = None,
            log: Callable[[str], None] | None = None, recipe: Recipe | None = None) -> Path:
    """Reference or kit checkpoint -> kit directory (slim by default), the config saved in the
    weights' metadata. Returns out_dir. A kit checkpoint written before that metadata existed is
    taken at its manifest's word for the fields no tensor shows; `log` is told so. `recipe` (a
    registry entry's) is recorded in the manifest when the source records none, its
    puzzle_emb_len the converted config's."""
    ckpt = load(src, config, trust_manifest=True)
    own = manifest_recipe(ckpt.manifest, str(src))
    if recipe is not None and own is not None and own.optimizer != recipe.optimizer:
        raise CheckpointError(f"{src}: the checkpoint says it was trained with {own.optimizer} ({own.source}) but "
                              f"{recipe.source} says {recipe.optimizer}: correct the registry entry")
    if recipe is not None and own is None:
        if recipe.puzzle_emb_len not in (None, ckpt.config.puzzle_emb_len):
            raise CheckpointError(f"{src}: the recipe ({recipe.source}) says puzzle_emb_len {recipe.puzzle_emb_len} "
                                  f"but the config gives {ckpt.config.puzzle_emb_len}: pass the config it was "
                                  "trained with")
        ckpt.manifest["recipe"] = {**recipe.to_json(), "puzzle_emb_len": ckpt.config.puzzle_emb_len}
        if ema is None:
            ema = recipe.ema
    trusted = Path(src).is_dir() and CONFIG_META_KEY not in _metadata(Path(src) / WEIGHTS_FILE)  # read by load
    if trusted and log is not None:
        log(f"{src}: its weights carry no saved config; H_cycles, L_cycles, num_heads, puzzle_emb_len, "
            "halt_max_steps and the other fields no tensor shows are taken from its manifest.json as written")
    prov = dict(ckpt.manifest.get("provenance", {}))
    prov.update({"converted_at": _conversion_time(),
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
