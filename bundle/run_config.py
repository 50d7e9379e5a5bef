"""How the Kaggle run is configured at `trm bundle` time: the runner's options, the accelerator and
the image pin, checked here so that a typo fails the build, not a weekly run.

Inputs: `--run-option KEY=VALUE` strings (KEY: a `submission.options.RunnerOptions` field name or
its flag, with or without the leading `--`), an accelerator name (bundle.metadata.ACCELERATORS),
an image pin (original, latest, or None for Kaggle's default).
Outputs: a frozen `RunConfig`: `runner_args()` (the flags the run cell appends to the runner's
command line, its EXTRA_ARGS setting) and `to_json()` (what the bundle manifest's "run" field and
the setup cell's RUN_CONFIG setting record).

Each value is parsed by the runner's own command-line parser and checked by RunnerOptions itself,
so the build refuses exactly what the runner would refuse, with the runner's message. Options the
notebook sets itself (folders, start time, deadline) are refused: the run cell passes them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

from bundle.metadata import ACCELERATORS, DEFAULT_ACCELERATOR, PINNING_TYPES, Accelerator, get_accelerator
from submission.options import OptionsError, RunnerOptions, flag_of, parser

# Set by the run cell or the bundle itself, never by --run-option: name -> what sets it.
SET_BY_NOTEBOOK = {
    "input_dir": "the run cell passes the competition's challenges file",
    "working_dir": "the run cell passes /kaggle/working",
    "bundle_dir": "the run cell passes the bundle it found",
    "start_time": "the run cell passes the setup cell's start time",
    "deadline": "the run cell passes start + time limit - margin",
    "time_limit_s": "the run cell passes --deadline, which the runner takes over the time limit",
    "margin_s": "the run cell passes --deadline, which the runner takes over the margin",
    "checkpoint": "the runner takes the bundle's checkpoint/",
    "scratch_dir": "the runner takes $TRM_SCRATCH from the notebook",
}
MAX_TEXT = 200  # characters in one KEY=VALUE: longer is a paste error, and is not echoed whole


class RunConfigError(ValueError):
    """A --run-option, --accelerator or --image-pin the build refuses; the message names it."""


@dataclass(frozen=True)
class RunConfig:
    """The run a bundle's notebook makes: runner options, machine, image pin."""

    options: tuple[tuple[str, Any], ...] = ()  # (RunnerOptions field, value) in the runner's field order
    accelerator: Accelerator = ACCELERATORS[DEFAULT_ACCELERATOR]
    image_pin: str | None = None  # kernel-metadata's docker_image_pinning_type; None: Kaggle's default

    def runner_args(self) -> list[str]:
        """The runner flags for the options, as `--flag=value` (a value may start with '-')."""
        flags = {f.name: flag_of(f) for f in fields(RunnerOptions)}
        args = []
        for name, value in self.options:
            if isinstance(value, bool):
                args += [flags[name]] if value else []  # a store_true flag: false is its absence
            else:
                args.append(f"{flags[name]}={value}")  # str(float) reads back as the same float
        return args

    def to_json(self) -> dict[str, Any]:
        return {"options": dict(self.options), "accelerator": self.accelerator.name,
                "machine_shape": self.accelerator.machine_shape, "expected_gpus": self.accelerator.gpus,
                "image_pin": self.image_pin}


def _keys() -> dict[str, str]:
    """{accepted spelling: field name}: the field name and its flag, with '-' or '_'."""
    out = {}
    for f in fields(RunnerOptions):
        for spelling in (f.name, flag_of(f).lstrip("-")):
            out[spelling] = out[spelling.replace("-", "_")] = out[spelling.replace("_", "-")] = f.name
    return out


def parse_run_options(pairs: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """The validated (field, value) pairs of `--run-option KEY=VALUE` strings; RunConfigError names
    the first one that is wrong (unknown key: with the list of known ones; bad value: the runner's
    own message)."""
    keys = _keys()
    flags = {f.name: flag_of(f) for f in fields(RunnerOptions)}
    types = {f.name: f.type for f in fields(RunnerOptions)}
    given: dict[str, str] = {}  # field name -> the KEY=VALUE it came from
    argv: list[str] = []
    for pair in pairs:
        if not isinstance(pair, str) or "=" not in pair:
            raise RunConfigError(f"--run-option {pair!r}: expected KEY=VALUE, e.g. train_mode=full")
        if len(pair) > MAX_TEXT:
            raise RunConfigError(f"--run-option {pair[:40]!r}...: {len(pair)} characters; no runner option "
                                 f"takes more than {MAX_TEXT}")
        key, value = pair.split("=", 1)
        name = keys.get(key.strip().lstrip("-"))
        if name is None:
            known = sorted({n for n in keys.values() if n not in SET_BY_NOTEBOOK})
            raise RunConfigError(f"--run-option {key!r}: not a runner option; known: {', '.join(known)}")
        if name in SET_BY_NOTEBOOK:
            raise RunConfigError(f"--run-option {key}: not settable here ({SET_BY_NOTEBOOK[name]})")
        if name in given:
            raise RunConfigError(f"--run-option {name} is given twice ({given[name]!r} and {pair!r}): keep one")
        given[name] = pair
        if types[name] == "bool":
            if value.strip().lower() not in ("true", "false"):
                raise RunConfigError(f"--run-option {key}: true or false, got {value!r}")
            argv += [flags[name]] if value.strip().lower() == "true" else []
        else:
            argv.append(f"{flags[name]}={value}")
    try:
        # the runner's own parser and checks, defaults included (--views-min <= --views-target, ...)
        options = RunnerOptions(**vars(parser().parse_args(argv)))
    except OptionsError as e:
        raise RunConfigError(f"--run-option: {e}") from None
    return tuple((f.name, getattr(options, f.name)) for f in fields(RunnerOptions) if f.name in given)


def runner_flags(pairs: Sequence[str]) -> tuple[str, ...]:
    """The runner's command-line flags for `--run-option KEY=VALUE` strings, checked as
    parse_run_options checks them."""
    flags = {f.name: flag_of(f) for f in fields(RunnerOptions)}
    types = {f.name: f.type for f in fields(RunnerOptions)}
    out: list[str] = []
    for name, value in parse_run_options(pairs):
        if types[name] == "bool":
            out += [flags[name]] if value else []
        else:
            out.append(f"{flags[name]}={value}")
    return tuple(out)


def run_config(pairs: Sequence[str] = (), accelerator: str = DEFAULT_ACCELERATOR,
               image_pin: str | None = None) -> RunConfig:
    """The checked RunConfig of `trm bundle`'s options; RunConfigError says what to change."""
    try:
        acc = get_accelerator(accelerator)
    except ValueError as e:
        raise RunConfigError(str(e)) from None
    if image_pin is not None and image_pin not in PINNING_TYPES:
        raise RunConfigError(f"--image-pin {image_pin!r}: one of {', '.join(PINNING_TYPES)}")
    options = parse_run_options(pairs)
    chosen = dict(options)
    if acc.gpus == 0 and chosen.get("device") == "cuda":
        raise RunConfigError(f"--run-option device=cuda with --accelerator {acc.name}: that machine has no GPU")
    if chosen.get("gpus") is not None and chosen["gpus"] > acc.gpus:
        raise RunConfigError(f"--run-option gpus={chosen['gpus']}: --accelerator {acc.name} has {acc.gpus} "
                             f"GPU{'s' if acc.gpus != 1 else ''}")
    return RunConfig(options, acc, image_pin)
