"""JPEGs a decode worker left undecoded (``decode(..., defer_jpeg=True)``), decoded in one batch on the
device that encodes them (nvJPEG on a GPU: ``xsearch.preprocess.jpeg_batch``), with their previews. The
indexer's batches and the cluster's actors call this before ``Encoder.encode_outcomes``."""

from __future__ import annotations

from xsearch.decode.files import Outcome, decode
from xsearch.modalities import Modality
from xsearch.preprocess import PreprocessCfg


def decode_jpegs(outcomes: list[Outcome], preprocess: PreprocessCfg, device) -> None:
    """The deferred JPEGs among ``outcomes`` -> model pixels on ``device`` and a thumbnail; what the batched
    decoder refuses is decoded the usual way, so every file still gets its input or its error."""
    outcomes = [o for o in outcomes if o.jpeg is not None]
    if not outcomes:
        return
    from PIL import Image

    from xsearch import thumbnails
    from xsearch.preprocess.jpeg_batch import model_pixels_and_previews

    size = preprocess[Modality.IMAGE].size
    decoded = model_pixels_and_previews([o.jpeg for o in outcomes], size, thumbnails.THUMBNAIL_SIZE, device)
    for outcome, done in zip(outcomes, decoded):
        outcome.jpeg = None
        if done is None:  # CMYK on nvJPEG, an odd subsampling, corrupt data: the PIL path says which
            again = decode(outcome.path, Modality.IMAGE, preprocess, thumbnail=True)
            outcome.tensor, outcome.metadata, outcome.error, outcome.stage = (
                again.tensor,
                again.metadata,
                again.error,
                again.stage,
            )
            continue
        pixels, small = done
        outcome.tensor = pixels
        preview = Image.fromarray(small.permute(1, 2, 0).numpy())
        outcome.metadata = {**outcome.metadata, "thumbnail": thumbnails.jpeg_thumbnail(preview)}
