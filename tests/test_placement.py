"""Where the work runs: one ``Placement`` decided beside the model choice, which the indexer and ``serve``
read instead of asking the hardware again."""

from __future__ import annotations

import pytest
import torch

from xsearch import Modality
from xsearch.encoder import Encoder
from xsearch.errors import UsageError
from xsearch.indexer.pipeline import CPU_BATCH, Indexer, default_workers
from xsearch.model.choice import ModelChoice
from xsearch.options import IndexOptions
from xsearch.placement import Placement
from xsearch.preprocess import jpeg_batch
from xsearch.store import Database


def test_auto_is_resolved_once_into_a_placement():
    placed = ModelChoice(device="cpu", precision="fp32").placement()
    assert placed == Placement("cpu", "fp32", placed.faiss_gpu, False) and not placed.on_gpu
    assert ModelChoice(device="cpu", precision="auto").placement().precision in ("fp32", "bf16", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU") as refused:
            ModelChoice(device="cuda").placement()  # before any model loads
        assert refused.value.argument == "device"


def test_jpegs_are_decoded_on_the_device_when_it_is_a_gpu_and_torchvision_can(monkeypatch):
    assert Placement.around("cuda:1", "bf16").on_gpu
    assert Placement.around("cuda:1", "bf16").decode_on_device == jpeg_batch.available()
    assert not Placement.around("cpu", "fp32").decode_on_device
    assert Placement.around("cpu", "fp32", gpu_decode=False).decode_on_device is False
    monkeypatch.setattr(jpeg_batch, "available", lambda: False)
    assert not Placement.around("cuda", "bf16").decode_on_device  # no torchvision: decoded by the workers
    with pytest.raises(UsageError, match="needs torchvision") as refused:
        Placement.around("cpu", "fp32", gpu_decode=True)
    assert refused.value.argument == "gpu_decode"


def test_the_indexer_sizes_its_work_from_the_placement_it_is_given(tmp_path, tiny_model):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    on_gpu = Indexer(store, encoder, IndexOptions(workers=0), Placement("cuda", "bf16", True, False))
    assert on_gpu.batch_size(Modality.IMAGE) == Modality.IMAGE.tower.spec.gpu_batch
    assert on_gpu.batch_size(Modality.TEXT) == Modality.TEXT.tower.spec.gpu_batch
    own = Indexer(store, encoder, IndexOptions(workers=0))  # none given: the encoder's
    assert own.placement == Placement.around(encoder.device, "fp32") and not own.placement.on_gpu
    assert own.batch_size(Modality.IMAGE) == CPU_BATCH
    assert default_workers(gpu=True) >= default_workers(gpu=False)
