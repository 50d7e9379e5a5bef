"""Wheels for the offline install: which requirements the image already satisfies, downloading or
copying binary wheels for the rest, and building trm-kit's own wheel.

Inputs: requirement strings (setup.cfg install_requires), a `TargetImage`, a destination folder,
optionally a local folder of wheels (--wheels-dir).
Outputs: `WheelDecision`s (image / vendor, with the reason), wheel files in the destination, and
`BundleError`s that say what to run when a wheel cannot be had offline.

Rules: torch (and the CUDA stack that comes with it) is never vendored: the image's build matches
its driver. A package the image has at a satisfying version is never replaced. Vendored wheels
are binary only, for the image's Python tag and every acceptable manylinux tag; each vendored
wheel's own requirements are checked against the image and the other vendored wheels: what the
image lacks is fetched in a further round, and a need for another version of a package the image
has is an error (the bundle never swaps an image package for a dependency's sake). trm-kit's own
wheel is rewritten as a deterministic archive (`normalize_wheel`: one fixed time, fixed
permissions, a fixed member order), so a rebuild of unchanged code gives the same bytes and the
bundle keeps its id.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from email.parser import Parser
from pathlib import Path
from typing import Callable

from bundle import BundleError
from bundle.image import TargetImage
from bundle.versions import (Requirement, Version, VersionError, canonical_name, evaluate_marker,
                             marker_environment, parse_requirement)

# Never vendored: the image's CUDA build must stay (3 GB, and it matches the driver).
NEVER_VENDOR = ("torch", "torchvision", "torchaudio", "triton")
NEVER_VENDOR_PREFIXES = ("nvidia-",)
MAX_ROUNDS = 5  # dependency-closure rounds before giving up

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class WheelDecision:
    """What happens to one requirement on the target image."""

    requirement: Requirement
    action: str  # "image": already installed at a satisfying version; "vendor": ship a wheel
    installed: Version | None  # the image's version, if it has the package
    reason: str


@dataclass(frozen=True)
class WheelFile:
    """A wheel file name split into its parts (PEP 427)."""

    path: Path
    name: str  # canonical
    version: Version
    python: str
    abi: str
    platform: str

    @classmethod
    def parse(cls, path: Path) -> "WheelFile":
        parts = path.name[:-4].split("-") if path.name.endswith(".whl") else []
        if len(parts) not in (5, 6):
            raise BundleError(f"{path}: not a wheel file name (name-version[-build]-python-abi-platform.whl)")
        try:
            version = Version.parse(parts[1])
        except VersionError:
            raise BundleError(f"{path}: wheel version {parts[1]!r} is not a PEP 440 version") from None
        return cls(path, canonical_name(parts[0]), version, parts[-3], parts[-2], parts[-1])


def never_vendored(name: str) -> bool:
    key = canonical_name(name)
    return key in NEVER_VENDOR or key.startswith(NEVER_VENDOR_PREFIXES)


def project_requirements(repo_root: Path) -> list[str]:
    """install_requires of trm-kit: from setup.cfg in a source checkout, else installed metadata."""
    cfg_path = repo_root / "setup.cfg"
    if cfg_path.is_file():
        cfg = configparser.ConfigParser()
        cfg.read(cfg_path)
        raw = cfg.get("options", "install_requires", fallback="")
        return [line.strip() for line in raw.splitlines() if line.strip() and not line.strip().startswith("#")]
    from importlib import metadata

    try:
        reqs = metadata.requires("trm-kit") or []
    except metadata.PackageNotFoundError:
        raise BundleError(f"no setup.cfg in {repo_root} and trm-kit is not installed: run from a source checkout")
    return [r for r in reqs if "extra ==" not in r]


def plan_wheels(requirements: list[str] | list[Requirement], target: TargetImage) -> list[WheelDecision]:
    """Decide, per requirement, whether the image satisfies it or a wheel must be shipped.

    Requirements whose marker is false on the image are dropped. A never-vendored package the image
    lacks or has at a wrong version is an error: the bundle could not work there.
    """
    installed = target.installed()
    env = marker_environment(target.python_version)
    decisions: list[WheelDecision] = []
    for item in requirements:
        req = parse_requirement(item) if isinstance(item, str) else item
        if req.marker and not evaluate_marker(req.marker, env):
            continue
        have = installed.get(req.key)
        if have is not None and req.contains(have):
            decisions.append(WheelDecision(req, "image", have, f"{target.name} has {req.key} {have}"))
            continue
        if never_vendored(req.name):
            found = f"has {have}" if have is not None else "does not have it"
            raise BundleError(
                f"{req} is required but {target.name} {found}; {req.key} is never vendored (the image's "
                f"CUDA build must stay): relax the requirement in setup.cfg or pick another --target")
        reason = (f"{target.name} has {req.key} {have}, which does not satisfy {req.spec_text}"
                  if have is not None else f"{target.name} does not have {req.key}")
        decisions.append(WheelDecision(req, "vendor", have, reason))
    return decisions


def download_command(requirements: list[Requirement], target: TargetImage, dest: Path,
                     python: str = sys.executable) -> list[str]:
    """The one `pip download` command fetching binary wheels of `requirements` for the image."""
    cmd = [python, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
           "--python-version", target.python_version, "--implementation", "cp", "--abi", target.python_tag]
    for tag in target.platforms:
        cmd += ["--platform", tag]
    cmd += ["-d", str(dest)]
    cmd += [f"{r.name}{r.spec_text}" for r in requirements]
    return cmd


def _offline_help(requirements: list[Requirement], target: TargetImage) -> str:
    cmd = download_command(requirements, target, Path("WHEELS"), python="python")
    return ("On a machine with network, run:\n  " + shlex.join(cmd) +
            "\nthen build again with --wheels-dir WHEELS.")


def find_local_wheel(req: Requirement, target: TargetImage, wheels_dir: Path) -> WheelFile | None:
    """The newest wheel in wheels_dir for `req` that installs on the image (finals before pre-releases)."""
    matches = []
    for path in sorted(wheels_dir.glob("*.whl")):
        try:
            wheel = WheelFile.parse(path)
        except BundleError:
            continue
        if wheel.name == req.key and req.contains(wheel.version) and \
                target.accepts_wheel_tags(wheel.python, wheel.abi, wheel.platform):
            matches.append(wheel)
    if not matches:
        return None
    return max(matches, key=lambda w: (not w.version.is_prerelease, w.version.key()))


def wheel_requirements(path: Path) -> list[Requirement]:
    """Requires-Dist of a wheel (from its METADATA), markers kept."""
    with zipfile.ZipFile(path) as zf:
        meta = next((n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if meta is None:
            raise BundleError(f"{path}: no .dist-info/METADATA inside; the wheel is broken")
        msg = Parser().parsestr(zf.read(meta).decode("utf-8", errors="replace"))
    out = []
    for line in msg.get_all("Requires-Dist") or []:
        try:
            out.append(parse_requirement(line))
        except VersionError:
            raise BundleError(f"{path}: cannot read its requirement {line!r}") from None
    return out


def _fetch_round(reqs: list[Requirement], target: TargetImage, dest: Path, wheels_dir: Path | None,
                 run: Runner, log: Callable[[str], None]) -> list[WheelFile]:
    if wheels_dir is not None:
        got, missing = [], []
        for req in reqs:
            wheel = find_local_wheel(req, target, wheels_dir)
            if wheel is None:
                missing.append(req)
            else:
                shutil.copy2(wheel.path, dest / wheel.path.name)
                got.append(WheelFile.parse(dest / wheel.path.name))
                log(f"wheel {wheel.path.name}: copied from {wheels_dir}")
        if missing:
            names = ", ".join(str(r) for r in missing)
            raise BundleError(f"--wheels-dir {wheels_dir} has no wheel for {names} that installs on "
                              f"{target.name} ({target.python_tag}, manylinux x86_64). " + _offline_help(missing, target))
        return got
    with tempfile.TemporaryDirectory(prefix="trm-wheels-") as tmp:
        cmd = download_command(reqs, target, Path(tmp))
        log("running: " + shlex.join(cmd))
        proc = run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            names = ", ".join(str(r) for r in reqs)
            raise BundleError(f"pip could not download binary wheels of {names} for {target.name}:\n{tail}\n"
                              + _offline_help(reqs, target))
        got = []
        for path in sorted(Path(tmp).glob("*.whl")):
            shutil.copy2(path, dest / path.name)
            got.append(WheelFile.parse(dest / path.name))
            log(f"wheel {path.name}: downloaded")
    return got


def fetch_wheels(decisions: list[WheelDecision], target: TargetImage, dest: Path,
                 wheels_dir: Path | None = None, run: Runner = subprocess.run,
                 log: Callable[[str], None] = lambda s: None) -> list[WheelFile]:
    """Put a wheel for every vendored requirement, and their missing dependencies, into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    installed = target.installed()
    env = marker_environment(target.python_version)
    todo = [d.requirement for d in decisions if d.action == "vendor"]
    asked = {r.key: r for r in todo}  # the requirement each vendored wheel was fetched for
    have: dict[str, WheelFile] = {}
    for _ in range(MAX_ROUNDS):
        if not todo:
            return sorted(have.values(), key=lambda w: w.name)
        for wheel in _fetch_round(todo, target, dest, wheels_dir, run, log):
            have[wheel.name] = wheel
        todo = []
        for wheel in list(have.values()):
            if have.get(wheel.name) is not wheel:  # dropped above for a narrower version
                continue
            for req in wheel_requirements(wheel.path):
                if req.marker and not evaluate_marker(req.marker, env):
                    continue
                if req.key in have:
                    if not req.contains(have[req.key].version):
                        # Wheels are fetched one package at a time (--no-deps), so the newest numpy can
                        # exceed numba's cap: fetch it again under both constraints.
                        old = have[req.key]
                        both = replace(asked[req.key], specifiers=tuple(dict.fromkeys(
                            asked[req.key].specifiers + req.specifiers)))
                        if both.specifiers == asked[req.key].specifiers:
                            raise BundleError(f"{wheel.path.name} needs {req} but the bundle has "
                                              f"{old.path.name}: pin a compatible version")
                        log(f"{wheel.name} needs {req}, not {old.path.name}: fetching {both}")
                        old.path.unlink(missing_ok=True)
                        del have[req.key]
                        asked[req.key] = both
                        todo = [t for t in todo if t.key != req.key] + [both]
                    continue
                on_image = installed.get(req.key)
                if on_image is not None and req.contains(on_image):
                    continue
                if never_vendored(req.name):
                    raise BundleError(f"{wheel.path.name} needs {req}, which {target.name} does not satisfy, and "
                                      f"{req.key} is never vendored: choose an older {wheel.name}")
                if on_image is not None:
                    # replacing a package the image ships for a dependency's sake is how images break
                    # (a numpy swap under tensorflow, numba, ...): make the user pick a fitting version
                    raise BundleError(f"{wheel.path.name} needs {req} but {target.name} has {req.key} {on_image}, "
                                      f"which the bundle will not replace: put a {wheel.name} wheel that accepts "
                                      f"{req.key} {on_image} into --wheels-dir, or pin {wheel.name} in setup.cfg")
                if all(t.key != req.key for t in todo):
                    log(f"{wheel.name} needs {req}: {target.name} has {on_image or 'none'}, vendoring it")
                    todo.append(req)
                    asked[req.key] = req
    raise BundleError(f"dependency closure did not settle after {MAX_ROUNDS} rounds: {', '.join(map(str, todo))}")


def normalize_wheel(path: Path, epoch: int) -> None:
    """Rewrite the wheel at `path` as a deterministic archive with the same members and bytes: every
    member dated `epoch` (a Unix time, 1980..2107), mode 644 (755 where executable), deflated at one
    level, in sorted order with the .dist-info files last and RECORD at the very end (where pip
    expects it). The contents are untouched, so RECORD's hashes stay valid."""
    date_time = time.gmtime(epoch)[:6]
    with zipfile.ZipFile(path) as zf:
        members = [(info.filename, info.external_attr, zf.read(info)) for info in zf.infolist()]

    def order(member: tuple[str, int, bytes]) -> tuple[bool, bool, str]:
        name = member[0]
        return ".dist-info/" in name, name.endswith(".dist-info/RECORD"), name

    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w") as out:
        for name, attr, data in sorted(members, key=order):
            info = zipfile.ZipInfo(name, date_time)
            info.create_system = 3  # unix, so the mode bits below are read
            if name.endswith("/"):
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
            else:
                info.external_attr = (stat.S_IFREG | (0o755 if (attr >> 16) & 0o111 else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, data, compresslevel=6)
    os.replace(tmp, path)


def build_own_wheel(repo_root: Path, dest: Path, run: Runner = subprocess.run,
                    log: Callable[[str], None] = lambda s: None, epoch: int | None = None) -> Path:
    """`pip wheel --no-deps --no-build-isolation` of the checkout, made deterministic by
    normalize_wheel at `epoch` (default: bundle.manifest.build_epoch()); returns the wheel path."""
    from bundle.manifest import build_epoch

    epoch = build_epoch() if epoch is None else epoch
    if not (repo_root / "setup.cfg").is_file():
        raise BundleError(f"{repo_root} is not a trm-kit source checkout (no setup.cfg): pass --own-wheel FILE")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trm-own-wheel-") as tmp:
        # Build from a clean copy of the packaging files and packages only: an in-tree build would
        # reuse a stale build/ folder (files deleted from the tree still shipped) and could pick up
        # stray files lying beside the code.
        src = Path(tmp) / "src"
        _copy_sources(repo_root, src)
        out_dir = Path(tmp) / "dist"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
               "-w", str(out_dir), str(src)]
        log("running: " + shlex.join(cmd))
        proc = run(cmd, capture_output=True, text=True, env=dict(os.environ, SOURCE_DATE_EPOCH=str(epoch)))
        built = sorted(out_dir.glob("trm_kit-*.whl"))
        if proc.returncode != 0 or not built:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
            raise BundleError(f"building the trm-kit wheel failed (needs setuptools>=61 and wheel "
                              f"installed, since build isolation is off):\n{tail}")
        normalize_wheel(built[-1], epoch)
        out = dest / built[-1].name
        shutil.copyfile(built[-1], out)
    return out


def _copy_sources(repo_root: Path, dest: Path) -> None:
    """Copy setup files and the packages named in setup.cfg ([options] packages) into dest."""
    cfg = configparser.ConfigParser()
    cfg.read(repo_root / "setup.cfg")
    packages = [p.strip() for p in re.split(r"[,\s]+", cfg.get("options", "packages", fallback="")) if p.strip()]
    if not packages:
        raise BundleError(f"{repo_root / 'setup.cfg'} lists no [options] packages")
    dest.mkdir(parents=True)
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (repo_root / name).is_file():
            shutil.copy2(repo_root / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in packages:
        rel = Path(*pkg.split("."))
        if not (repo_root / rel).is_dir():
            raise BundleError(f"setup.cfg lists package {pkg!r} but {repo_root / rel} does not exist")
        if not (dest / rel).exists():
            shutil.copytree(repo_root / rel, dest / rel, ignore=ignore)
