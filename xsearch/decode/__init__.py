"""Decoding: media files -> model inputs, for the indexer and for searches alike.

- ``files``: one file -> ``Decoded`` (model input, metadata, preview, sha256), never raising for a bad file;
  ``Outcome``, what became of it once encoded;
- ``work``: a decode worker's unit of work (a planned file, ``Task``; a moment chunk) and what it returns;
- ``pool``: supervised worker processes (a crash, hang or memory overrun costs one file), started from a
  fork server (``_forkserver_init``) and dying with their parent (``lifeline``);
- ``deferred``: JPEGs left undecoded by the workers, decoded in one batch on the encoder's GPU.

Nothing here imports the indexer: ``xsearch index`` and a search's query files share these rooms.
"""

from xsearch.decode.files import OUT_OF_MEMORY, Decoded, Outcome, decode, decode_query_file, guarded_decode

__all__ = ["OUT_OF_MEMORY", "Decoded", "Outcome", "decode", "decode_query_file", "guarded_decode"]
