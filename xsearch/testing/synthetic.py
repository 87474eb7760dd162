"""Synthetic embeddings that behave like real ones, for tests and benchmarks.

Isotropic Gaussian clusters in 1024-d make every neighbour a near-tie, so no ANN index can rank them
(BENCHMARKS.md, search). Real embeddings have a low intrinsic dimension and a decaying spectrum; so here:
clustered latents in ``latent_dim`` dimensions whose j-th coordinate is scaled by ``j ** -decay``, a fixed
random linear map to ``dim``, a little isotropic noise, then L2 normalisation. Queries come from the same
distribution (same ``space_seed``, another ``seed``). With the defaults at 30k vectors, the exact top-1 to
top-10 score gap is about 0.06 (isotropic 1024-d clusters: under 0.02)."""

from __future__ import annotations

import numpy as np


def clustered_embeddings(
    n: int,
    dim: int = 1024,
    *,
    latent_dim: int = 24,
    clusters: int = 64,
    cluster_spread: float = 1.0,
    decay: float = 0.5,
    noise: float = 0.01,
    seed: int = 0,
    space_seed: int = 0,
    chunk: int = 200_000,
) -> np.ndarray:
    """``float32 [n, dim]`` unit vectors with low intrinsic dimension, generated in chunks."""
    space = np.random.default_rng(space_seed)  # the "model": cluster centres, spectrum, projection
    centres = space.standard_normal((clusters, latent_dim)).astype(np.float32)
    scales = (np.arange(1, latent_dim + 1) ** -decay).astype(np.float32)
    projection = (space.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)).astype(np.float32)
    rng = np.random.default_rng(seed)  # the samples
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        latent = centres[rng.integers(0, clusters, m)]
        latent = (latent + cluster_spread * rng.standard_normal((m, latent_dim), dtype=np.float32)) * scales
        x = latent @ projection + noise * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65_536) -> np.ndarray:
    """Ground-truth ids ``[q, k]`` by exact inner product (database row numbers)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(database), chunk):
        scores = queries @ database[start : start + chunk].T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        top = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, top, 1)
        best_ids = np.take_along_axis(all_ids, top, 1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_ids, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found in the returned top-k."""
    k = truth.shape[1]
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k


def sensor_pairs(folder, n: int = 500, seed: int = 0, noise: float = 0.02) -> list[tuple[str, str]]:
    """A synthetic new sensor for ``xsearch bind``: ``n`` photos (a gradient between two random colours at a
    random angle: their embeddings spread even under a random-weights model, which maps noise images to
    nearly one vector) and, for each, a reading that is a fixed transform of it: its 8 x 8 colour thumbnail
    through a fixed random projection, plus noise, as a 1-D ``.npy``. Returns ``(reading, photo)`` paths."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "readings").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1, 1, 8, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    projection = rng.standard_normal((192, 192)).astype(np.float32) / np.sqrt(192)
    pairs = []
    for i in range(n):
        start, end = rng.random((2, 3, 1, 1)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        along = (np.clip(x * np.cos(angle) + y * np.sin(angle), -1, 1) + 1) / 2
        thumb = start * (1 - along) + end * along  # [3, 8, 8] in [0, 1]
        photo, reading = folder / "photos" / f"{i:04d}.png", folder / "readings" / f"{i:04d}.npy"
        pixels = Image.fromarray((thumb.transpose(1, 2, 0) * 255).astype(np.uint8))
        pixels.resize((64, 64), Image.BILINEAR).save(photo)
        np.save(reading, projection @ thumb.reshape(-1) + noise * rng.standard_normal(192).astype(np.float32))
        pairs.append((str(reading), str(photo)))
    return pairs
