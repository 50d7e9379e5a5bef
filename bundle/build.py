"""Build the offline Kaggle bundle: one call from a checkpoint spec to two upload-ready folders.

Inputs: `BundleOptions` (checkpoint spec, output folder, target image, wheels folder, Kaggle owner
and slugs, competition slug, the run's configuration: runner options, accelerator, image pin).
Outputs, under options.out:
  dataset/   trm-bundle.json (manifest: every file with size and sha256), wheels/ (trm-kit's
             wheel + binary wheels of whatever the target image lacks), checkpoint/ (slim kit
             checkpoint), dataset-metadata.json        -> `kaggle datasets create -p dataset`
  kernel/    trm-submit.ipynb (generated), kernel-metadata.json  -> `kaggle kernels push -p kernel`
  work/      scratch (converted checkpoint cache); not uploaded
and a `BuildResult` with the size report (checkpoint before and after slimming, wheels, total).

The build happens in a staging folder beside options.out (same file system) and is moved into
place only after every check passed, the credential scan over every file of dataset/ and kernel/
last: a refused or failed build leaves nothing new in options.out. options.out and the folders
in it are never followed through symbolic links.

Reproducible: the same checkout, checkpoint, target and options give byte-identical files and the
same bundle id (a notebook pushed earlier accepts a rebuild's dataset). No hashed file holds the
build's time: the own wheel is a deterministic archive and a converted checkpoint records the
build epoch (bundle.manifest.build_epoch) as its conversion time; only the manifest's created_at
(not hashed) is the clock, unless SOURCE_DATE_EPOCH is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from bundle import BundleError
from bundle.checkpoint_source import check_shippable, copy_checkpoint, resolve_checkpoint, shipped_recipe
from bundle.image import DEFAULT_TARGET, TargetImage, get_target
from bundle.manifest import build_epoch, write_manifest
from bundle.metadata import (DATASET_METADATA_FILE, DEFAULT_ACCELERATOR, DEFAULT_COMPETITION, DEFAULT_LICENCE,
                             KERNEL_METADATA_FILE, dataset_metadata, kernel_metadata, validate_dataset_metadata,
                             validate_kernel_metadata, write_metadata)
from bundle.notebook import NOTEBOOK_NAME, NotebookSettings, write_notebook
from bundle.publish import find_credentials
from bundle.run_config import RunConfig, run_config
from bundle.wheels import WheelDecision, build_own_wheel, fetch_wheels, plan_wheels, project_requirements
from submission.clock import RUNNER_MARGIN_S, TIME_LIMIT_S

REPO_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_OWNER = "your-username"
BUILT_FOLDERS = ("dataset", "kernel", "work")  # what a build puts into --out


@dataclass(frozen=True)
class BundleOptions:
    checkpoint: str  # kit dir, step_N file (+config), hf:owner/repo/file, or registry name
    out: Path  # output folder (dataset/, kernel/, work/ are created inside)
    target: str = DEFAULT_TARGET  # target image name, or a pip-freeze snapshot file
    config: str | None = None  # arch config for a reference checkpoint (preset name or file)
    wheels_dir: Path | None = None  # take dependency wheels from here instead of the network
    own_wheel: Path | None = None  # a prebuilt trm-kit wheel (default: build it from REPO_ROOT)
    owner: str = PLACEHOLDER_OWNER  # Kaggle username owning the dataset and notebook
    slug: str = "trm-kit-bundle"  # dataset slug, 6-50 chars
    kernel_slug: str | None = None  # notebook slug; default "<slug>-submit"
    competition: str = DEFAULT_COMPETITION
    licence: str = DEFAULT_LICENCE
    time_limit_s: int = TIME_LIMIT_S  # notebook session limit the runner's deadline derives from
    runner_margin_s: int = RUNNER_MARGIN_S
    repo_root: Path = REPO_ROOT
    run_options: tuple[str, ...] = ()  # `--run-option KEY=VALUE`s: runner options the notebook passes
    accelerator: str = DEFAULT_ACCELERATOR  # a bundle.metadata.ACCELERATORS name: kernel-metadata's machine
    image_pin: str | None = None  # docker_image_pinning_type (original | latest); None: Kaggle's default

    @property
    def kernel_ref_slug(self) -> str:
        return self.kernel_slug or f"{self.slug}-submit"


@dataclass(frozen=True)
class BuildResult:
    out: Path
    dataset_dir: Path
    kernel_dir: Path
    manifest: dict[str, Any]
    decisions: list[WheelDecision]
    checkpoint_source: str
    sizes: dict[str, int] = field(default_factory=dict)  # bytes: checkpoint_source, checkpoint, wheels, dataset

    def size_report(self) -> list[str]:
        s = self.sizes
        ratio = s["checkpoint_source"] / s["checkpoint"] if s.get("checkpoint") else float("nan")
        lines = [f"checkpoint before slimming  {_mb(s['checkpoint_source'])}  ({self.checkpoint_source})",
                 f"checkpoint in the bundle    {_mb(s['checkpoint'])}  (slim ratio {ratio:.1f}x)",
                 f"wheels                      {_mb(s['wheels'])}  ({len(self.manifest_wheels())} files)"]
        lines += [f"  {name}  {_mb(size)}" for name, size in self.manifest_wheels()]
        lines.append(f"dataset total               {_mb(s['dataset'])}")
        return lines

    def manifest_wheels(self) -> list[tuple[str, int]]:
        return [(f["path"].split("/", 1)[1], f["size"]) for f in self.manifest["files"] if f["path"].startswith("wheels/")]


def _mb(n: int) -> str:
    return f"{n / 1e6:9.2f} MB"


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_out(out: Path) -> None:
    """Refuse an --out the build must not write into: a link (itself or a bundle folder inside it:
    writing through dataset/ -> elsewhere would ship that folder's files and overwrite them), a
    file, or a folder holding anything but an earlier bundle."""
    if out.is_symlink():
        raise BundleError(f"--out {out} is a symbolic link (to {os.path.realpath(out)}): a bundle is never "
                          "written through a link; pass the real folder")
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file: choose a folder")
    if not out.exists():
        return
    for child in sorted(out.iterdir()):
        if child.is_symlink():
            raise BundleError(f"{child} is a symbolic link (to {os.path.realpath(child)}): a bundle is never "
                              "written through a link; remove it or choose another --out")
        if child.name not in BUILT_FOLDERS:
            raise BundleError(f"{out} is not empty and does not hold an earlier bundle ({child.name}): "
                              "choose an empty --out")
        if not child.is_dir():
            raise BundleError(f"{child} is a file where a bundle folder belongs: remove it or choose another --out")


def _staging_parent(out: Path) -> Path:
    """The nearest existing folder at or above out's parent: staging there keeps it on out's file
    system (the final move is a rename) and creates no folder a failed build would leave behind."""
    parent = out.parent
    while not parent.is_dir():
        parent = parent.parent
    return parent


def _move_into_place(stage: Path, out: Path) -> None:
    """Replace out's bundle folders with the staged ones (each a rename on one file system)."""
    out.mkdir(parents=True, exist_ok=True)
    _check_out(out)  # nothing may have turned into a link while the build ran
    old = stage / ".replaced"
    old.mkdir()
    for name in BUILT_FOLDERS:
        if (out / name).exists():
            os.rename(out / name, old / name)
        os.rename(stage / name, out / name)


def build_bundle(options: BundleOptions, log: Callable[[str], None] = lambda s: None) -> BuildResult:
    """Build dataset/ and kernel/ under options.out (see the module docstring)."""
    from trm_core import __version__ as trm_version

    target: TargetImage = get_target(options.target)
    log(f"target {target.name}: Python {target.python_version}, {target.description}")
    # The run's configuration and the metadata first: a bad option, owner or slug should fail before
    # minutes of downloads.
    try:
        run = run_config(options.run_options, options.accelerator, options.image_pin)
        epoch = build_epoch()
    except ValueError as e:
        raise BundleError(str(e)) from None
    dmeta = dataset_metadata(options.owner, options.slug, licence=options.licence)
    dataset_ref = dmeta["id"]
    kmeta = kernel_metadata(options.owner, options.kernel_ref_slug, NOTEBOOK_NAME, dataset_ref, options.competition,
                            accelerator=run.accelerator.name, image_pin=run.image_pin)
    problems = validate_dataset_metadata(dmeta) + validate_kernel_metadata(kmeta)
    if problems:
        raise BundleError("Kaggle metadata would be refused:\n  - " + "\n  - ".join(problems))
    if options.owner == PLACEHOLDER_OWNER:
        log(f"owner not given: metadata uses '{PLACEHOLDER_OWNER}'; rebuild with --owner before --push")

    out = Path(os.path.abspath(options.out))
    _check_out(out)
    # Everything is built in a staging folder and moved into out only when every check passed: a
    # refused or failed build leaves nothing new there (no key-bearing copy, no half tree).
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=_staging_parent(out)))
    try:
        staged = _build_into(options, target, run, epoch, dmeta, kmeta, stage, out, trm_version, log)
        _move_into_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return replace(staged, dataset_dir=out / "dataset", kernel_dir=out / "kernel")


@contextlib.contextmanager
def _epoch_for_conversion(epoch: int) -> Iterator[None]:
    """SOURCE_DATE_EPOCH set to `epoch` while the checkpoint is converted, so that the converted
    manifest's converted_at (trm_core.checkpoint.convert reads the convention) is not the clock."""
    before = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = before


def _build_into(options: BundleOptions, target: TargetImage, run: RunConfig, epoch: int, dmeta: dict[str, Any],
                kmeta: dict[str, Any], stage: Path, out: Path, trm_version: str,
                log: Callable[[str], None]) -> BuildResult:
    """dataset/, kernel/ and work/ under stage, every file of dataset/ and kernel/ scanned."""
    dataset_dir, kernel_dir, work_dir = (stage / name for name in BUILT_FOLDERS)
    for d in (dataset_dir, kernel_dir, work_dir):
        d.mkdir()

    # checkpoint
    with _epoch_for_conversion(epoch):
        ckpt = resolve_checkpoint(options.checkpoint, work_dir, options.config)
    copy_checkpoint(ckpt, dataset_dir / "checkpoint")
    _refuse_credentials(dataset_dir / "checkpoint", "dataset/checkpoint")  # before minutes of wheel downloads
    log(f"checkpoint {ckpt.source} -> {out / 'dataset' / 'checkpoint'}: "
        f"{check_shippable(dataset_dir / 'checkpoint')}")

    # wheels
    wheels_dir = dataset_dir / "wheels"
    decisions = plan_wheels(project_requirements(options.repo_root), target)
    for d in decisions:
        log(f"{d.requirement}: {d.action} ({d.reason})")
    vendored = fetch_wheels(decisions, target, wheels_dir, options.wheels_dir, log=log)
    if options.own_wheel is not None:
        if not options.own_wheel.is_file():
            raise BundleError(f"--own-wheel {options.own_wheel} does not exist")
        shutil.copyfile(options.own_wheel, wheels_dir / options.own_wheel.name)
    else:
        build_own_wheel(options.repo_root, wheels_dir, log=log, epoch=epoch)

    manifest = write_manifest(dataset_dir, trm_version=trm_version, target=target.name,
                              python_tag=target.python_tag,
                              extra={"checkpoint": "checkpoint", "wheels": "wheels",
                                     "checkpoint_source": ckpt.source,
                                       "recipe": shipped_recipe(dataset_dir / "checkpoint"),
                                       # every wheel shipped besides trm-kit's own, the dependencies
                                       # fetched for a vendored package included (numba's llvmlite)
                                       "vendored": [w.name for w in vendored],
                                       "competition": options.competition,
                                       "run": run.to_json()})
    write_metadata(dataset_dir / DATASET_METADATA_FILE, dmeta, [])

    settings = NotebookSettings(bundle_id=manifest["bundle_id"], trm_version=trm_version,
                                time_limit_s=options.time_limit_s, runner_margin_s=options.runner_margin_s,
                                competition=options.competition, run=run)
    write_notebook(settings, kernel_dir / NOTEBOOK_NAME)
    write_metadata(kernel_dir / KERNEL_METADATA_FILE, kmeta, validate_kernel_metadata(kmeta, kernel_dir))
    # the one scan over everything the bundle holds, the manifest and notebook written last included
    _refuse_credentials(dataset_dir, "dataset")
    _refuse_credentials(kernel_dir, "kernel")

    sizes = {"checkpoint_source": ckpt.source_bytes,
             "checkpoint": _tree_bytes(dataset_dir / "checkpoint"),
             "wheels": _tree_bytes(wheels_dir),
             "dataset": _tree_bytes(dataset_dir)}
    return BuildResult(out, dataset_dir, kernel_dir, manifest, decisions, ckpt.source, sizes)


def _refuse_credentials(folder: Path, shown: str) -> None:
    """A BundleError naming each file (shown: the folder's name in the bundle, not the staging path)
    and the kind of credential found; nothing was written to --out."""
    findings = find_credentials(folder)
    if findings:
        raise BundleError(f"refusing to build, nothing written: credentials or links found in {shown}: " +
                          "; ".join(f"{f.path} ({f.reason})" for f in findings) +
                          ". Remove them from the sources (checkpoint folder, package tree) and build again")


def default_owner() -> str:
    """KAGGLE_USERNAME if set (never read from credential files), else the placeholder."""
    return os.environ.get("KAGGLE_USERNAME", "").strip().lower() or PLACEHOLDER_OWNER
