"""Shared fixtures.

``shared_dir``: the project's ``../shared`` folder (real images, the published table). When it is absent the
test is skipped with a reason on a user's clone, and *fails* in CI (``CI`` or ``RISKDECOMP_REQUIRE_SHARED`` set), so
CI can never pass by silently skipping the real-data tests.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _shared_path() -> Path:
    return Path(os.environ.get("RISKDECOMP_SHARED", ROOT.parent / "shared")).resolve()


def _required() -> bool:
    return any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("CI", "RISKDECOMP_REQUIRE_SHARED"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_path()
    if not (path / "data").is_dir():
        msg = (f"this test needs the project's shared data folder at {path} (real images and the published "
               f"table); set RISKDECOMP_SHARED to its location")
        if _required():
            pytest.fail(f"CI run: {msg}", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep tests polite on small machines (2 cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch and BLAS thread: tiny problems run fastest so, and do not fight other processes for the cores."""
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)
