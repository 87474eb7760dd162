from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/corpus.py, tests/faulty.py (imported by decode workers)


@pytest.fixture(scope="session")
def tiny_model():
    """The test-only tiny ImageBind, random weights, seeded."""
    from xsearch.model import create_model

    torch.manual_seed(0)
    return create_model("tiny_test")


@pytest.fixture(scope="session")
def reference():
    """Meta's reference implementation (PyPI ``imagebind-unofficial``, installed with --no-deps).

    Its ``data`` module imports pytorchvideo 0.1.5, which wants ``torchvision.transforms.functional_tensor``,
    a module newer torchvision dropped; it is an alias of ``functional`` for what pytorchvideo uses.
    """
    import torchvision.transforms.functional as tv_functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    try:
        import imagebind.data as data
        from imagebind.models import imagebind_model, multimodal_preprocessors
    except ImportError as exc:  # a broken install must fail the parity tests, never skip them
        pytest.fail(f"the reference implementation is not importable ({exc}); install it as README says")
    return type("Reference", (), {"data": data, "model": imagebind_model, "preprocessors": multimodal_preprocessors})


@pytest.fixture(scope="module")
def s3():
    """A real S3 server (moto's, on 127.0.0.1) with the AWS environment pointing at it: ``objectstore.S3``."""
    from objectstore import s3_server

    with s3_server() as server:
        yield server
