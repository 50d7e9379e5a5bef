"""Send training metrics where ML people look: TensorBoard, Weights & Biases, or nowhere.

Input: one metrics dict per logged interval (the same dict the training loop writes as a line of
metrics.jsonl, which stays the record of the run) and its step.
Output: TensorBoard event files under `<out>/tensorboard/`, or a W&B run (offline by default, under
`<out>/wandb/`; `wandb sync` uploads it later), or nothing (`NullLogger`, the default).

Every logger has the same two methods, `log(metrics, step)` and `close()`, so the loop calls them
without asking which one it has. Each library is imported only when its logger is built, so neither
is ever needed unless asked for (extras `tensorboard` and `wandb`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

KINDS = ("tensorboard", "wandb")
WANDB_MODES = ("offline", "online")
PREFIX = "train/"  # metric names as they appear in both tools: train/loss, train/exact_accuracy, ...


class MetricsLogger(Protocol):
    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Logs nothing."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict under their tool names (the step itself excluded)."""
    out = {}
    for k, v in metrics.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[PREFIX + k] = float(v)
    return out


class TensorBoardLogger:
    """Scalars through torch.utils.tensorboard (needs the tensorboard package)."""

    def __init__(self, log_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("--log-to tensorboard needs the tensorboard package: "
                              "pip install 'trm-kit[tensorboard]'") from e
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        if config:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for name, value in scalars(metrics).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # once per interval: a killed run keeps its curves

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run; offline unless mode="online" (then it needs a login)."""

    def __init__(self, out_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 project: str = "trm-kit", mode: str = "offline", name: str | None = None) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {mode!r}")
        try:
            import wandb
        except ImportError as e:
            raise ImportError("--log-to wandb needs the wandb package: pip install 'trm-kit[wandb]'") from e
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=str(out_dir), mode=mode,
                              config=dict(config or {}),
                              settings=wandb.Settings(silent=True, console="off"))  # stderr stays ours

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log(scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class TeeLogger:
    """Several loggers as one."""

    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:
        self.loggers = list(loggers)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_logger(kinds: Sequence[str], out_dir: str | os.PathLike, config: Mapping[str, Any] | None = None, *,
                wandb_project: str = "trm-kit", wandb_mode: str = "offline",
                name: str | None = None) -> MetricsLogger:
    """The logger for `kinds` (any of KINDS; empty: NullLogger), writing under out_dir."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown logger {unknown[0]!r}; expected one of {KINDS}")
    built: list[MetricsLogger] = []
    try:
        for kind in dict.fromkeys(kinds):  # each once, in the order given
            if kind == "tensorboard":
                built.append(TensorBoardLogger(Path(out_dir) / "tensorboard", config))
            else:
                built.append(WandbLogger(out_dir, config, project=wandb_project, mode=wandb_mode, name=name))
    except BaseException:
        for logger in built:
            logger.close()
        raise
    if not built:
        return NullLogger()
    return built[0] if len(built) == 1 else TeeLogger(built)


@dataclass(frozen=True)
class LoggerSpec:
    """Which loggers to open and how (the --log-to options), as data that can travel to another process."""

    kinds: tuple[str, ...] = ()  # any of KINDS; empty: no logger
    wandb_project: str = "trm-kit"
    wandb_mode: str = "offline"

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown logger {unknown[0]!r}; expected one of {KINDS}")
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {self.wandb_mode!r}")

    def check(self) -> None:
        """Raise ImportError (saying what to install) now, not when the first logger opens."""
        import importlib

        for kind in self.kinds:
            try:
                importlib.import_module(kind)
            except ImportError as e:
                raise ImportError(f"--log-to {kind} needs the {kind} package: pip install 'trm-kit[{kind}]'") from e

    def open(self, out_dir: str | os.PathLike, config: Mapping[str, Any] | None = None,
             name: str | None = None) -> MetricsLogger:
        return open_logger(self.kinds, out_dir, config, wandb_project=self.wandb_project,
                           wandb_mode=self.wandb_mode, name=name)
