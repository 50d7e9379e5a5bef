"""Kaggle metadata files: dataset-metadata.json for the bundle, kernel-metadata.json for the notebook.

Inputs: owner, dataset slug, kernel slug, titles, licence, competition slug, notebook file name.
Outputs: the two dicts (written as JSON), and validators returning a list of precise problems
(empty when fine) so a bad id fails here, not after a 2 GB upload.

Rules mirror kaggle 2.2.x's own checks (dataset slug 6-50 chars, title 6-50, exactly one licence,
subtitle 20-80; kernel slug >= 5 chars, title >= 5 and slugifying to the slug; language and kernel
type from fixed lists; `docker_image_pinning_type` original or latest) plus Kaggle's slug syntax.
Two fields are written explicitly because the client's defaults are wrong for a competition:
`enable_internet` defaults to true when absent, and an unknown `machine_shape` is silently
replaced by a generic GPU. The machine comes from `ACCELERATORS`, the shapes Kaggle offers this
competition's notebooks (`trm bundle --accelerator`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any

DEFAULT_COMPETITION = "arc-prize-2026-arc-agi-2"
DEFAULT_MACHINE_SHAPE = "NvidiaL4"  # the 4xL4 machine ("L4x4"); NvidiaL4X1 is a single L4
DEFAULT_LICENCE = "CC0-1.0"
DATASET_METADATA_FILE = "dataset-metadata.json"
KERNEL_METADATA_FILE = "kernel-metadata.json"

# kaggle-cli docs/datasets_metadata.md, "Licenses"
LICENCES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)
# kaggle-cli docs/kernels.md (2026): accelerator names accepted by `kernels push`
MACHINE_SHAPES = ("NvidiaTeslaT4", "NvidiaTeslaT4Highmem", "NvidiaTeslaA100", "NvidiaL4", "NvidiaL4X1",
                  "NvidiaH100", "NvidiaRtxPro6000", "TpuV5E8", "TpuV6E8")
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")  # docker_image_pinning_type: the notebook's first image, or the newest


class MetadataError(ValueError):
    """Metadata Kaggle would refuse; the message lists every problem."""


@dataclass(frozen=True)
class Accelerator:
    """One machine a competition notebook can run on, as `trm bundle --accelerator` names it."""

    name: str  # the --accelerator value
    machine_shape: str | None  # kernel-metadata.json's machine_shape; None: no accelerator (CPU only)
    gpus: int  # GPUs the notebook should see there (the setup cell compares)
    description: str
    refused: str = ""  # why a bundle is never built for it ("" : it is offered)


# The shapes Kaggle offers this competition's notebooks (KAGGLE.md: L4x4 for notebooks attached to it,
# T4x2 for any; P100 was retired: kaggle 2.2.5 warns and the session runs on T4s).
ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator("l4x4", DEFAULT_MACHINE_SHAPE, 4, "4x NVIDIA L4, 96 GB (the competition's L4x4; 2x GPU quota)"),
    Accelerator("t4x2", "NvidiaTeslaT4", 2, "2x NVIDIA T4, 32 GB (Kaggle's default GPU)"),
    Accelerator("p100", None, 1, "1x NVIDIA P100",
                refused="Kaggle retired the P100 (NvidiaTeslaP100 sessions run on T4s instead, kaggle 2.2.5) and "
                        "the kaggle-2026 image's cu128 torch has no P100 (sm_60) kernels: choose t4x2"),
    Accelerator("none", None, 0, "no accelerator: the runner post-trains and predicts on the CPU"),
)}
DEFAULT_ACCELERATOR = "l4x4"


def get_accelerator(name: str) -> Accelerator:
    """The offered accelerator called `name`; MetadataError naming the choices otherwise."""
    acc = ACCELERATORS.get(name)
    if acc is None:
        offered = ", ".join(a.name for a in ACCELERATORS.values() if not a.refused)
        raise MetadataError(f"--accelerator {name!r}: one of {offered}")
    if acc.refused:
        raise MetadataError(f"--accelerator {name}: {acc.refused}")
    return acc


_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OWNER_RE = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")


def slugify(title: str) -> str:
    """Kaggle's title -> slug rule, for ASCII titles: lowercase, runs of other characters -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def check_owner(owner: str, what: str = "owner") -> list[str]:
    if not _OWNER_RE.match(owner or ""):
        return [f"{what} {owner!r}: use your Kaggle username, lowercase letters, digits, '-' or '_' "
                "(not at the start or end)"]
    return []


def check_slug(slug: str, what: str, lo: int, hi: int) -> list[str]:
    problems = []
    if not _SLUG_RE.match(slug or ""):
        problems.append(f"{what} {slug!r}: lowercase letters, digits and single hyphens only, "
                        "not starting or ending with '-'")
    if not lo <= len(slug or "") <= hi:
        problems.append(f"{what} {slug!r} has {len(slug or '')} characters; Kaggle needs {lo}-{hi}")
    return problems


def check_ref(ref: Any, what: str, slug_lo: int, slug_hi: int) -> list[str]:
    """'owner/slug' with a valid owner and slug (no version part)."""
    if not isinstance(ref, str) or ref.count("/") != 1:
        return [f"{what} {ref!r}: must be 'owner/slug'"]
    owner, slug = ref.split("/")
    return check_owner(owner, f"{what} owner") + check_slug(slug, f"{what} slug", slug_lo, slug_hi)


def dataset_metadata(owner: str, slug: str, title: str | None = None, licence: str = DEFAULT_LICENCE,
                     subtitle: str | None = None, description: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"title": title or slug, "id": f"{owner}/{slug}", "licenses": [{"name": licence}]}
    if subtitle:
        meta["subtitle"] = subtitle
    if description:
        meta["description"] = description
    return meta


def validate_dataset_metadata(meta: dict[str, Any]) -> list[str]:
    problems = check_ref(meta.get("id"), "dataset id", 6, 50)
    title = meta.get("title")
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        problems.append(f"dataset title {title!r}: Kaggle needs 6-50 characters")
    licences = meta.get("licenses")
    if not isinstance(licences, list) or len(licences) != 1:
        problems.append(f"licenses {licences!r}: Kaggle needs exactly one entry, e.g. [{{\"name\": \"CC0-1.0\"}}]")
    else:
        name = licences[0].get("name") if isinstance(licences[0], dict) else None
        if name not in LICENCES:
            problems.append(f"licence {name!r} is not one Kaggle accepts; use one of: {', '.join(LICENCES)}")
    subtitle = meta.get("subtitle")
    if subtitle is not None and (not isinstance(subtitle, str) or not 20 <= len(subtitle) <= 80):
        problems.append(f"subtitle {subtitle!r}: Kaggle needs 20-80 characters")
    return problems


def kernel_metadata(owner: str, kernel_slug: str, code_file: str, dataset_ref: str,
                    competition: str = DEFAULT_COMPETITION, title: str | None = None,
                    accelerator: str = DEFAULT_ACCELERATOR, image_pin: str | None = None) -> dict[str, Any]:
    """kernel-metadata.json for the notebook on `accelerator` (an ACCELERATORS name); image_pin, when
    given, is written as docker_image_pinning_type (absent: Kaggle's default)."""
    acc = get_accelerator(accelerator)
    meta: dict[str, Any] = {
        "id": f"{owner}/{kernel_slug}",
        "title": title or kernel_slug,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": acc.machine_shape is not None,
        "enable_tpu": False,
        "enable_internet": False,  # written explicitly: the client's default is True
        "dataset_sources": [dataset_ref],
        "competition_sources": [competition],
        "kernel_sources": [],
        "model_sources": [],
    }
    if acc.machine_shape is not None:
        meta["machine_shape"] = acc.machine_shape
    if image_pin is not None:
        meta["docker_image_pinning_type"] = image_pin
    return meta


def validate_kernel_metadata(meta: dict[str, Any], folder: Path | None = None) -> list[str]:
    problems = check_ref(meta.get("id"), "kernel id", 5, 50)
    title = meta.get("title")
    if not isinstance(title, str) or len(title) < 5:
        problems.append(f"kernel title {title!r}: Kaggle needs at least 5 characters")
    elif isinstance(meta.get("id"), str) and "/" in meta["id"] and slugify(title) != meta["id"].split("/")[-1]:
        problems.append(f"kernel title {title!r} slugifies to {slugify(title)!r}, not the id's slug "
                        f"{meta['id'].split('/')[-1]!r}: Kaggle would then create a differently named notebook")
    if meta.get("language") not in LANGUAGES:
        problems.append(f"language {meta.get('language')!r}: one of {LANGUAGES}")
    if meta.get("kernel_type") != "notebook":
        problems.append(f"kernel_type {meta.get('kernel_type')!r}: must be 'notebook' (a notebook keeps the "
                        "submission written before a failing cell; a script does not)")
    code_file = meta.get("code_file")
    if not isinstance(code_file, str) or not code_file:
        problems.append("code_file is missing: name the .ipynb beside kernel-metadata.json")
    elif folder is not None and not (folder / code_file).is_file():
        problems.append(f"code_file {code_file!r} not found in {folder}")
    if meta.get("enable_internet") is not False:
        problems.append(f"enable_internet is {meta.get('enable_internet')!r}: code competitions need false, "
                        "written explicitly (kaggle's default when absent is true)")
    if meta.get("is_private") not in (True, False):
        problems.append(f"is_private {meta.get('is_private')!r}: true or false")
    shape = meta.get("machine_shape")
    if meta.get("enable_gpu") is False:
        if shape is not None:  # a GPU shape with the GPU off: which one the session gets is Kaggle's guess
            problems.append(f"machine_shape {shape!r} with enable_gpu false: drop machine_shape for a CPU "
                            "notebook, or set enable_gpu true")
    elif meta.get("enable_gpu") is not True:
        problems.append(f"enable_gpu {meta.get('enable_gpu')!r}: true (a GPU machine_shape) or false (CPU only)")
    elif shape not in MACHINE_SHAPES:
        problems.append(f"machine_shape {shape!r}: one of {', '.join(MACHINE_SHAPES)} (an unknown name is "
                        "silently replaced by a generic GPU); the 4xL4 machine is 'NvidiaL4'")
    pin = meta.get("docker_image_pinning_type")
    if pin is not None and pin not in PINNING_TYPES:
        problems.append(f"docker_image_pinning_type {pin!r}: one of {', '.join(PINNING_TYPES)} (kaggle refuses "
                        "the push otherwise)")
    datasets = meta.get("dataset_sources", [])
    if not isinstance(datasets, list) or not datasets:
        problems.append("dataset_sources must list the bundle dataset 'owner/slug'")
    else:
        for ref in datasets:
            problems += check_ref(ref, "dataset source", 6, 50)
    comps = meta.get("competition_sources", [])
    if not isinstance(comps, list) or len(comps) != 1:
        problems.append(f"competition_sources {comps!r}: exactly one competition slug")
    else:
        problems += check_slug(comps[0], "competition slug", 3, 80)
    return problems


def write_metadata(path: Path, meta: dict[str, Any], problems: list[str]) -> Path:
    """Write meta as JSON after validation; MetadataError listing every problem otherwise."""
    if problems:
        raise MetadataError(f"{path.name} would be refused by Kaggle:\n  - " + "\n  - ".join(problems))
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path
