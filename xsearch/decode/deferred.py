"""JPEGs a decode worker left undecoded (``decode(..., defer_jpeg=True)``), decoded in one batch on the
device that encodes them (nvJPEG on a GPU: ``xsearch.preprocess.jpeg_batch``), with their previews: the
decode stage finished where the pixels are needed. The indexer's batches and the cluster's actors call
this before ``Encoder.encode_decoded``."""

from __future__ import annotations

from xsearch.decode.files import Decoded, decode
from xsearch.modalities import Modality
from xsearch.preprocess import PreprocessCfg


def decode_jpegs(files: list[Decoded], preprocess: PreprocessCfg, device) -> None:
    """The deferred JPEGs among ``files`` -> model pixels on ``device`` and a thumbnail; what the batched
    decoder refuses is decoded the usual way, so every file still gets its input or its error."""
    deferred = [d for d in files if d.jpeg is not None]
    if not deferred:
        return
    from PIL import Image

    from xsearch import thumbnails
    from xsearch.preprocess.jpeg_batch import model_pixels_and_previews

    size = preprocess[Modality.IMAGE].size
    batch = model_pixels_and_previews([d.jpeg for d in deferred], size, thumbnails.THUMBNAIL_SIZE, device)
    for decoded, done in zip(deferred, batch):
        decoded.jpeg = None
        if done is None:  # CMYK on nvJPEG, an odd subsampling, corrupt data: the PIL path says which
            again = decode(decoded.path, Modality.IMAGE, preprocess, thumbnail=True)
            decoded.tensor, decoded.metadata, decoded.error, decoded.stage = (
                again.tensor,
                again.metadata,
                again.error,
                again.stage,
            )
            continue
        pixels, small = done
        decoded.tensor = pixels
        preview = Image.fromarray(small.permute(1, 2, 0).numpy())
        decoded.metadata = {**decoded.metadata, "thumbnail": thumbnails.jpeg_thumbnail(preview)}
