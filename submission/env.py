"""Where the runner is: the kind of run, the hardware, and the input files, found without hard-coded paths.

Inputs: the process environment (KAGGLE_IS_COMPETITION_RERUN, KAGGLE_KERNEL_RUN_TYPE), the machine
(nvidia-smi or torch.cuda for GPUs, os.cpu_count, /proc/meminfo) and an input folder tree.
Outputs: the run kind ("rerun", "commit", "interactive" or "local"), a `Hardware` record, whether
torch can use those GPUs (`cuda_usable`: the runner asks before it sends a job to them), the path
of the test challenges file (in the folder of the competition the bundle was built for; searched
for by name only when that folder is absent, and refused when several are found) and of the trm-kit
bundle (searched for by its marker file, submission.bundle_check.MARKER_NAME).

Kaggle mounts inputs under /kaggle/input/<slug>/ (2025) or /kaggle/input/competitions/<slug>/ and
/kaggle/input/datasets/<owner>/<slug>/ (2026): both competition layouts are looked at. Standard library
only at import time; torch is imported only when nvidia-smi is missing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from submission.bundle_check import MARKER_NAME

RUN_KINDS = ("rerun", "commit", "interactive", "local")
CHALLENGES_NAME = "arc-agi_test_challenges.json"
CHALLENGES_PATTERN = "*test_challenges*.json"
BUNDLE_MARKER = MARKER_NAME  # the bundle folder's marker file
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")  # Kaggle slugs: lowercase letters, digits, hyphens
MAX_DEPTH = 6  # /kaggle/input/datasets/<owner>/<slug>/<folder>/<file> is depth 5


def run_kind(environ: Mapping[str, str] | None = None) -> str:
    """"rerun" (the hidden scoring run), "commit" (Save & Run All), "interactive" (the editor) or "local".

    The rerun flag wins: KAGGLE_IS_COMPETITION_RERUN set to anything but "", "0" or "false".
    KAGGLE_KERNEL_RUN_TYPE is "Batch" for a commit and "Interactive" in the editor; any other value
    still means Kaggle, and is treated as interactive.
    """
    env = os.environ if environ is None else environ
    flag = env.get("KAGGLE_IS_COMPETITION_RERUN", "").strip().lower()
    if flag and flag not in ("0", "false"):
        return "rerun"
    kind = env.get("KAGGLE_KERNEL_RUN_TYPE", "").strip().lower()
    if kind == "batch":
        return "commit"
    if kind:
        return "interactive"
    return "local"


@dataclass(frozen=True)
class Hardware:
    """What the runner can use."""

    gpu_count: int
    gpu_names: tuple[str, ...] = ()
    gpu_memory_bytes: tuple[int, ...] = ()  # total memory per GPU
    cpu_count: int = 1
    ram_bytes: int | None = None  # MemTotal from /proc/meminfo
    ram_available_bytes: int | None = None  # MemAvailable
    source: str = "none"  # how the GPUs were found: nvidia-smi, torch, none

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        ram = f", {self.ram_bytes / 2**30:.0f} GiB RAM" if self.ram_bytes else ""
        if not self.gpu_count:
            return f"no GPU, {self.cpu_count} CPU core(s){ram}"
        names = sorted(set(self.gpu_names))
        mem = f" ({self.gpu_memory_bytes[0] / 2**30:.0f} GiB each)" if self.gpu_memory_bytes else ""
        return f"{self.gpu_count} x {'/'.join(names)}{mem}, {self.cpu_count} CPU core(s){ram}"


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo as {key: bytes}; {} where it cannot be read (not Linux)."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                    out[key.strip()] = int(parts[0]) * scale
    except OSError:
        pass
    return out


def _gpus_from_nvidia_smi() -> list[tuple[str, int]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    gpus = []
    for line in proc.stdout.strip().splitlines():
        name, _, mem = line.rpartition(",")
        try:
            gpus.append((name.strip(), int(float(mem.strip())) * 2**20))  # MiB
        except ValueError:
            continue
    return gpus


def _gpus_from_torch() -> list[tuple[str, int]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), int(torch.cuda.get_device_properties(i).total_memory))
            for i in range(torch.cuda.device_count())]


def cuda_usable() -> tuple[int, str]:
    """(how many GPUs torch can use, why none when 0): nvidia-smi may list GPUs that this torch
    cannot use (a CPU build, a driver older than its CUDA), and a job sent to them only crashes.
    Imports torch; no CUDA context is made (device_count does not create one)."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        return 0, f"torch does not import ({type(e).__name__}: {e})"
    try:
        if not torch.cuda.is_available():
            built = getattr(torch.version, "cuda", None)
            return 0, (f"torch {torch.__version__} is a CPU build" if not built else
                       f"torch {torch.__version__} (CUDA {built}) sees no usable GPU (driver or device missing)")
        return int(torch.cuda.device_count()), ""
    except Exception as e:  # noqa: BLE001 - a driver error is an answer too
        return 0, f"torch.cuda failed: {type(e).__name__}: {e}"


def detect_hardware(environ: Mapping[str, str] | None = None) -> Hardware:
    """GPUs (nvidia-smi first, so the runner creates no CUDA context of its own; else torch.cuda),
    CPU count and RAM. CUDA_VISIBLE_DEVICES, when set, limits the GPUs counted."""
    env = os.environ if environ is None else environ
    gpus, source = _gpus_from_nvidia_smi(), "nvidia-smi"
    if gpus is None:
        gpus, source = _gpus_from_torch(), "torch"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and source == "nvidia-smi":
        picks = [int(v) for v in visible.split(",") if v.strip().isdigit()]
        gpus = [gpus[i] for i in picks if i < len(gpus)]
    mem = meminfo()
    return Hardware(gpu_count=len(gpus), gpu_names=tuple(n for n, _ in gpus),
                    gpu_memory_bytes=tuple(m for _, m in gpus), cpu_count=os.cpu_count() or 1,
                    ram_bytes=mem.get("MemTotal"), ram_available_bytes=mem.get("MemAvailable"),
                    source=source if gpus else "none")


def _walk(root: Path, max_depth: int, skip: Path | None = None) -> list[Path]:
    """Every file under root, at most max_depth folders down, breadth-first, names sorted."""
    out, level = [], [root]
    for _ in range(max_depth + 1):
        nxt = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_dir():
                        if skip is None or Path(e.path) != skip:
                            nxt.append(Path(e.path))
                    elif e.is_file():
                        out.append(Path(e.path))
                except OSError:
                    continue
        level = nxt
    return out


@dataclass(frozen=True)
class ChallengesChoice:
    """Which test challenges file the runner answers, and how it was chosen."""

    path: Path | None  # None: no file, or several and no way to tell which is the competition's
    how: str  # "given" (input_dir is the file), "competition" (the slug's folder), "search", "ambiguous", "none"
    candidates: tuple[Path, ...] = ()  # every file the search found (several: the choice was refused)

    def describe(self) -> str:
        if self.how == "ambiguous":
            return (f"{len(self.candidates)} test challenges files found, refusing to guess which one is the "
                    f"competition's: {', '.join(str(c) for c in self.candidates)} (attach the competition under "
                    "its own slug, or pass the file itself as --input-dir)")
        return f"{self.path} (by {self.how})" if self.path else "no test challenges file"


def _candidates(root: Path, skip: Path | None, max_depth: int) -> list[Path]:
    """The challenges files under root: every `arc-agi_test_challenges.json`, else every
    `*test_challenges*.json`, shallowest first."""
    files = _walk(root, max_depth, skip)
    exact = [f for f in files if f.name == CHALLENGES_NAME]
    return exact or [f for f in files if fnmatch.fnmatch(f.name, CHALLENGES_PATTERN)]


def choose_challenges(input_dir: str | os.PathLike, competition: str | None = None,
                      skip: str | os.PathLike | None = None, max_depth: int = MAX_DEPTH) -> ChallengesChoice:
    """The test challenges file to answer. input_dir may itself be the file. Else, with the
    competition's slug, its folder decides: `<input_dir>/competitions/<slug>/` (2026) or
    `<input_dir>/<slug>/` (2025), the file at its top or the one file inside it. Only when neither
    folder exists is input_dir searched (`skip`, the bundle, is not), and then only one file may be
    found: another competition or a dataset attached beside it holds a file of the same name, and
    the first in sorted order would answer someone else's tasks."""
    root = Path(input_dir)
    if root.is_file():
        return ChallengesChoice(root, "given", (root,))
    skip_path = Path(skip) if skip else None
    for folder in ((root / "competitions" / competition, root / competition) if competition else ()):
        if folder.is_dir():
            top = folder / CHALLENGES_NAME
            return _one_of([top] if top.is_file() else _candidates(folder, skip_path, max_depth), "competition")
    return _one_of(_candidates(root, skip_path, max_depth), "search")


def _one_of(found: list[Path], how: str) -> ChallengesChoice:
    if len(found) == 1:
        return ChallengesChoice(found[0], how, tuple(found))
    return ChallengesChoice(None, "ambiguous" if found else "none", tuple(found))


def find_challenges(input_dir: str | os.PathLike, skip: str | os.PathLike | None = None,
                    max_depth: int = MAX_DEPTH, competition: str | None = None) -> Path | None:
    """choose_challenges(...).path: the file, or None when there is none or no single one."""
    return choose_challenges(input_dir, competition, skip, max_depth).path


def bundle_competition(bundle_dir: str | os.PathLike | None) -> str | None:
    """The competition slug the bundle was built for (its marker's "competition"), or None."""
    if not bundle_dir:
        return None
    try:
        with open(Path(bundle_dir) / BUNDLE_MARKER, encoding="utf-8") as f:
            slug = json.load(f).get("competition")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    # a slug names one folder: anything else (a path, "..", an empty string) is not used as one
    return slug if isinstance(slug, str) and _SLUG_RE.fullmatch(slug) else None


def find_bundle(input_dir: str | os.PathLike, max_depth: int = MAX_DEPTH) -> Path | None:
    """The folder holding the bundle marker file (the shallowest), or None."""
    for f in _walk(Path(input_dir), max_depth):
        if f.name == BUNDLE_MARKER:
            return f.parent
    return None


@dataclass(frozen=True)
class Environment:
    """Everything the runner learned about where it runs, for run.json."""

    kind: str
    hardware: Hardware
    kaggle_vars: dict[str, str] = field(default_factory=dict)  # the KAGGLE_* run-type variables seen

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hardware": self.hardware.to_json(), "kaggle_vars": self.kaggle_vars}


def detect(environ: Mapping[str, str] | None = None) -> Environment:
    env = os.environ if environ is None else environ
    seen = {k: env[k] for k in ("KAGGLE_IS_COMPETITION_RERUN", "KAGGLE_KERNEL_RUN_TYPE") if k in env}
    return Environment(run_kind(env), detect_hardware(env), seen)


def versions() -> dict[str, str]:
    """The versions a run.json records: Python and the packages the jobs import."""
    import platform

    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "numba", "trm_core"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            out[mod] = "not importable"
    return out
