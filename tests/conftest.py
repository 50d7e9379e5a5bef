"""Shared pytest fixtures: where the reference golden fixtures live, the repository root, and a
very small kit checkpoint for the runner and dry-run tests.

The fixture root comes from TRM_REFERENCE_FIXTURES (default ../shared/fixtures/reference beside
the repository), so the same tests run against any other fixture set with the same layout.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def reference_root() -> Path:
    """The golden-fixture root: $TRM_REFERENCE_FIXTURES or ../shared/fixtures/reference."""
    env = os.environ.get("TRM_REFERENCE_FIXTURES")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "fixtures" / "reference").resolve()


def reference_subdirs(name: str) -> list[Path]:
    """Every sub-folder of `<root>/<name>/`, discovered (sorted), for parametrising tests."""
    base = reference_root() / name
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    root = reference_root()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root}: set TRM_REFERENCE_FIXTURES")
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory) -> Path:
    """A kit checkpoint of a very small random TRM (canvas 12): steps take milliseconds."""
    import torch

    from trm_core import checkpoint
    from trm_core.model import TRM, TRMConfig

    cfg = TRMConfig.from_name("tiny", hidden_size=16, num_heads=2, H_cycles=1, L_cycles=1, halt_max_steps=2,
                              puzzle_emb_ndim=16, num_puzzle_identifiers=3)
    out = tmp_path_factory.mktemp("ckpt") / "micro"
    checkpoint.save(checkpoint.slim(checkpoint.from_model(TRM(cfg, generator=torch.Generator().manual_seed(0)))), out)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Workers run as threads of this process: one torch thread keeps them from fighting over 2 cores
    (modules that run workers in-process use it with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
