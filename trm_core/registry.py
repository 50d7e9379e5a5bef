"""The registry of known checkpoints (pretrained/registry.json): where each lives and its arch.

Input: a registry name such as "trelis-arc-agi-2". Output: a `RegistryEntry` with the hub repo,
file name, TRMConfig, optimiser variant and provenance. Reading the registry needs no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm_core.model import TRMConfig

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
