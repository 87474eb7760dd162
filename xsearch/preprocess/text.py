"""Text: the CLIP byte-level BPE tokenizer (49,408 ids, context 77), as ImageBind's text tower expects.

The merges file ``bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's (MIT licence), shipped as package data.
Ids are ``[<start>] + BPE(text) + [<end>]``, truncated to ``context_length`` with the end token kept last,
zero-padded. The text head pools at the end token, which has the highest id in the vocabulary.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import html
import os
from dataclasses import dataclass
from importlib import resources

import ftfy
import regex
import torch

from xsearch.errors import DecodeError
from xsearch.model.config import IMAGEBIND_HUGE, ImageBindCfg
from xsearch.preprocess.prepared import Preprocessed
from xsearch.sources import media_size, open_media

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# Merges used by CLIP: the file's first line is a header; 49152 - 256 - 2 merges follow.
_NUM_MERGES = 49152 - 256 - 2
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@dataclass(frozen=True)
class TextCfg:
    context_length: int = IMAGEBIND_HUGE.context_length
    max_file_bytes: int = 1 << 20  # a .txt larger than this is refused rather than read whole

    @classmethod
    def for_model(cls, model: ImageBindCfg) -> TextCfg:
        return cls(context_length=model.context_length)


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters (no whitespace or
    control characters), so that BPE can work on strings without an unknown token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


MAX_TEXT_CHARS = 16_384  # read of a text for its first 77 tokens (a token is at least one character)
MAX_WORD_BYTES = 256  # longer words are merged in pieces of this size (no real word is that long)


class Tokenizer:
    """CLIP BPE tokenizer. ``tokenizer(["a dog", "rain"])`` -> ``LongTensor[2, 77]``."""

    def __init__(
        self, context_length: int = IMAGEBIND_HUGE.context_length, merges_path: str | os.PathLike | None = None
    ):
        self.context_length = context_length
        if merges_path is None:
            data = resources.files("xsearch.preprocess").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
        else:
            data = open(merges_path, "rb").read()
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = list(_byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id = self.encoder[START_TOKEN]
        self.end_id = self.encoder[END_TOKEN]
        self._byte_encoder = _byte_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {START_TOKEN: (START_TOKEN,), END_TOKEN: (END_TOKEN,)}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str, ends: bool = True) -> tuple[str, ...]:
        key = word if ends else word + "\0"  # a piece of a longer word has no end-of-word marker
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + ("</w>" if ends else "")]
        while len(parts) > 1:
            # Merge the adjacent pair that was learned earliest, everywhere it occurs.
            ranked = [(self.merge_rank.get(pair, _NUM_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, best = min(ranked)
            if rank == _NUM_MERGES:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        if len(self._cache) < 100_000:
            self._cache[key] = result
        return result

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of ``text`` without start/end tokens; with ``limit``, the first ``limit`` (or a few more).

        Bounded whatever the input: with a limit only the first ``MAX_TEXT_CHARS`` characters are read (77
        tokens never need more), and a word longer than ``MAX_WORD_BYTES`` is merged in pieces of that size
        (BPE is quadratic in a word's length: a 30,000-letter word took 36 s)."""
        ids: list[int] = []
        for piece in _SPLIT.findall(_clean(text if limit is None else text[:MAX_TEXT_CHARS])):
            data = piece.encode("utf-8")
            for start in range(0, len(data), MAX_WORD_BYTES):
                chunk = data[start : start + MAX_WORD_BYTES]
                word = "".join(self._byte_encoder[b] for b in chunk)
                ids.extend(self.encoder[token] for token in self._bpe(word, ends=start + MAX_WORD_BYTES >= len(data)))
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def decode(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self._byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text, self.context_length)][: self.context_length - 1] + [self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = IMAGEBIND_HUGE.context_length) -> Tokenizer:
    """A shared tokenizer (building one reads the merges file, ~0.3 s)."""
    return Tokenizer(context_length)


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose mark is its prefix
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _bom_encoding(raw: bytes) -> str | None:
    """UTF-16/32 text announces itself with a byte-order mark; anything else is read as UTF-8."""
    return next((encoding for bom, encoding in _BOMS if raw.startswith(bom)), None)


def read_text_file(path: str | os.PathLike, cfg: TextCfg = TextCfg()) -> str:
    """A ``.txt`` file's contents as text: UTF-8 (with or without BOM) or UTF-16/32 with a BOM, else a clear
    error."""
    name = os.fspath(path)
    try:
        size = media_size(name)
        if size > cfg.max_file_bytes:
            raise DecodeError(name, f"text file is {size} bytes, above the {cfg.max_file_bytes} byte limit")
        with open_media(name) as handle:
            raw = handle.read()
    except DecodeError.OS_ERRORS as exc:
        raise DecodeError.from_os_error(name, exc) from None
    encoding = _bom_encoding(raw)
    if encoding is None and b"\x00" in raw:
        raise DecodeError(name, "not text (contains NUL bytes)")
    try:
        text = raw.decode(encoding or "utf-8-sig")
    except UnicodeDecodeError as exc:
        label = (encoding or "utf-8").upper()
        raise DecodeError(name, f"not {label} text (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise DecodeError(name, "text file is empty")
    return text


def preprocess_text(text: str, cfg: TextCfg = TextCfg()) -> torch.Tensor:
    """A string -> ``LongTensor[77]`` of token ids."""
    return get_tokenizer(cfg.context_length)(text)[0]


def preprocess_text_file(path: str | os.PathLike, cfg: TextCfg = TextCfg()) -> torch.Tensor:
    return preprocess_text(read_text_file(path, cfg), cfg)


def prepare(path, cfg: TextCfg, thumbnail: bool = True) -> Preprocessed:
    """A ``.txt`` file -> token ids (the page previews text from the file itself)."""
    return Preprocessed(preprocess_text_file(path, cfg))
