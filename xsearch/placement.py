"""Where one process's work runs, decided once beside the model choice and handed down.

``Placement`` answers "am I on a GPU" for the whole process: the model's device and precision (``auto``
resolved for this machine), whether FAISS may train and assign on a GPU, and whether JPEGs are decoded in
batches on the model's device. The indexer sizes its batches and decode workers from it and ``serve``
puts its exact search where it says; no layer below asks the hardware again.
"""

from __future__ import annotations

from dataclasses import dataclass

from xsearch.errors import UsageError


@dataclass(frozen=True)
class Placement:
    """``device``: torch's spelling (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``precision``: ``fp32``, ``bf16``
    or ``int8``, never ``auto``; ``faiss_gpu``: FAISS sees a GPU for k-means and list assignment;
    ``decode_on_device``: JPEGs are left whole by the decode workers and decoded in batches on ``device``."""

    device: str = "cpu"
    precision: str = "fp32"
    faiss_gpu: bool = False
    decode_on_device: bool = False

    @property
    def on_gpu(self) -> bool:
        return _is_cuda(self.device)

    @classmethod
    def around(cls, device, precision: str, gpu_decode: bool | None = None) -> Placement:
        """The placement of a model already on ``device`` at ``precision`` (a loaded encoder's).
        ``gpu_decode``: ``None`` decodes JPEGs on the device when it is a GPU and torchvision can."""
        from xsearch.index.gpu import gpu_available
        from xsearch.preprocess import jpeg_batch

        device = str(device)
        if gpu_decode and not jpeg_batch.available():
            raise UsageError(
                "decoding JPEGs in batches needs torchvision: pip install 'xsearch[gpu]'", argument="gpu_decode"
            )
        decode = (_is_cuda(device) and jpeg_batch.available()) if gpu_decode is None else gpu_decode
        return cls(device, precision, gpu_available(), bool(decode))


def _is_cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"
