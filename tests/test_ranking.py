"""Ranking across modalities: calibrated merging, cut-offs, duplicates, few-shot labels, classify output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xsearch import Collection, Modality, Query
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.errors import UsageError
from xsearch.model import save_checkpoint
from xsearch.query import Engine
from xsearch.query.classify import prototypes
from xsearch.query.ranking import Calibration, autocut
from xsearch.store import Database, ItemRecord
from xsearch.testing.media import gradient_image, tone, write_wav

runner = CliRunner()
DIM = 1024


def at_cosine(query: np.ndarray, cosines: np.ndarray, rng) -> np.ndarray:
    """Unit vectors whose cosine with ``query`` is each of ``cosines``."""
    noise = rng.standard_normal((len(cosines), len(query))).astype(np.float32)
    noise -= np.outer(noise @ query, query)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosines[:, None] * query + np.sqrt(1 - cosines[:, None] ** 2) * noise).astype(np.float32)


@pytest.fixture(scope="module")
def two_scales(tmp_path_factory):
    """ImageBind-like scales for an image query: unrelated images ~0.37 (below 0.47), the 20 right images
    0.50-0.56; unrelated sounds ~0.05 (below 0.16), the 20 right sounds 0.22-0.30: below most images."""
    rng = np.random.default_rng(0)
    query = rng.standard_normal(DIM).astype(np.float32)
    query /= np.linalg.norm(query)

    def below(centre, spread, count, top):
        values = rng.normal(centre, spread, 2 * count)
        return values[values < top][:count]

    def spread_evenly(low, high):
        return np.linspace(low, high, 20) + rng.normal(0, 1e-4, 20)

    groups = {
        ("image", False): below(0.37, 0.03, 5000, 0.47),
        ("image", True): spread_evenly(0.50, 0.56),
        ("audio", False): below(0.05, 0.03, 2000, 0.16),
        ("audio", True): spread_evenly(0.22, 0.30),
    }
    store = Database.open(tmp_path_factory.mktemp("scales") / "db", model_id="tiny_test", embed_dim=1024)
    relevant = set()
    for (modality, right), cosines in groups.items():
        vectors = at_cosine(query, cosines.astype(np.float32), rng)
        uris = [f"/{modality}/{'right' if right else 'other'}{i}" for i in range(len(vectors))]
        store.add_items([ItemRecord(u, Modality(modality), v) for u, v in zip(uris, vectors)])
        relevant |= set(uris) if right else set()
    return store, query, relevant


def test_raw_merge_favours_one_modality_and_calibrated_merge_finds_both(two_scales):
    store, query, relevant = two_scales
    engine = Engine(store)
    merged = engine.search(Query.vector(query), target="image,audio", k=40)
    precision = sum(r.uri in relevant for r in merged) / 40
    assert precision >= 0.9 and {r.modality for r in merged[:40]} == {Modality.IMAGE, Modality.AUDIO}
    assert sum(r.modality is Modality.AUDIO for r in merged) >= 18
    raw = sorted(merged + engine.search(Query.vector(query), target="image", k=40), key=lambda r: -r.score)
    assert all(r.modality is Modality.IMAGE for r in raw[:40])  # what a merge by raw cosine would return
    calibrated = [r.calibrated for r in merged]
    assert calibrated == sorted(calibrated, reverse=True)


def test_single_target_keeps_raw_order_and_scores_exactly(two_scales):
    store, query, _ = two_scales
    engine = Engine(store)
    results = engine.search(Query.vector(query), target="audio", k=25)
    index = engine.index(Modality.AUDIO)
    scores, ids = index.search(engine.embed(Query.vector(query))[None], 25)  # the index's own answer
    assert [r.id for r in results] == ids[0].tolist()
    assert [r.score for r in results] == [float(s) for s in scores[0]]  # bit for bit
    assert all(r.calibrated is not None for r in results)


def test_calibration_is_a_robust_z_score():
    rng = np.random.default_rng(1)
    query = np.eye(DIM, dtype=np.float32)[0]
    sample = at_cosine(query, rng.normal(0.3, 0.02, 4000).astype(np.float32), rng)
    sample[:40] = at_cosine(query, np.full(40, 0.99, np.float32), rng)  # 1% outliers barely move it
    calibration = Calibration.from_sample(query, sample)
    assert calibration.centre == pytest.approx(0.3, abs=0.003) and calibration.spread == pytest.approx(0.02, rel=0.1)
    assert calibration(0.4) == pytest.approx(5.0, rel=0.1)


@pytest.mark.parametrize(
    "scores, jumps, kept",
    [
        ([0.90, 0.89, 0.88, 0.70, 0.69, 0.68], 1, 3),
        ([0.90, 0.89, 0.88, 0.70, 0.69, 0.68], 2, 6),
        ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 1, 7),  # evenly spaced: no jump
        ([0.95, 0.60, 0.59, 0.58, 0.30, 0.29], 1, 1),
        ([0.95, 0.60, 0.59, 0.58, 0.30, 0.29], 2, 4),
        ([0.5, 0.1], 1, 2),
    ],
)
def test_autocut(scores, jumps, kept):
    assert autocut(scores, jumps) == kept


def test_cut_offs_in_a_search(two_scales):
    store, query, relevant = two_scales
    engine = Engine(store)
    image = engine.search(Query.vector(query), target="image", k=60, autocut=1)
    assert {r.uri for r in image} == {u for u in relevant if u.startswith("/image/")}  # the 20 right ones
    assert all(r.score >= 0.5 for r in engine.search(Query.vector(query), target="image", k=60, min_score=0.5))
    both = engine.search(Query.vector(query), target="all", k=100, min_calibrated=4.0)
    assert {r.uri for r in both} == relevant
    with pytest.raises(UsageError, match="autocut"):
        engine.search(Query.vector(query), autocut=0)


def test_search_cli_shows_calibrated_and_takes_cut_offs(two_scales):
    store, query, relevant = two_scales
    item = sorted(relevant)[0]
    args = ["search", "--db", str(store.path), "--item", item, "-k", "50", "--autocut", "1", "--json"]
    out = json.loads(runner.invoke(app, args).stdout)
    assert 1 <= len(out["results"]) < 50 and all("calibrated" in r for r in out["results"])
    table = runner.invoke(app, ["search", "--db", str(store.path), "--item", item, "-k", "3"])
    assert "calibrated" in table.stdout.splitlines()[0]


# ---- duplicates ----------------------------------------------------------------------------------------------


def test_identical_files_come_back_once_listing_the_others(tmp_path, tiny_model):
    media = tmp_path / "media"
    (media / "copies").mkdir(parents=True)
    photo = gradient_image(media / "photo.jpg", seed=1)
    (media / "copies" / "same.jpg").write_bytes(photo.read_bytes())
    (media / "copies" / "again.jpg").write_bytes(photo.read_bytes())
    gradient_image(media / "other.jpg", seed=2)
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    assert collection.index([media], workers=0).indexed == 4  # four rows
    hits = collection.search(Query.image(photo), target="image", k=2)
    assert len(hits) == 2 and hits[1].uri == str(media / "other.jpg")
    copies = {str(media / "photo.jpg"), str(media / "copies" / "same.jpg"), str(media / "copies" / "again.jpg")}
    assert {hits[0].uri, *hits[0].duplicates} == copies and len(hits[0].duplicates) == 2
    everything = collection.search(Query.image(photo), target="image", k=4, dedup=False)
    assert len(everything) == 4 and all(r.duplicates == [] for r in everything)
    shown = runner.invoke(app, ["search", "--db", str(tmp_path / "db"), "--item", str(photo), "-k", "2"])
    assert "(also: " in shown.stdout
    assert len(json.loads(runner.invoke(app, [*shown_args(tmp_path, photo), "--no-dedup"]).stdout)["results"]) == 4


def shown_args(tmp_path, photo):
    return ["search", "--db", str(tmp_path / "db"), "--item", str(photo), "-k", "4", "--json"]


# ---- few-shot labels ------------------------------------------------------------------------------------------


def test_one_shot_prototypes_blended_with_text_beat_examples_alone():
    """Items scatter widely around their class; one example each is a noisy prototype, the label's text a
    cleaner one (text and class share a direction): blending the two labels more items correctly."""
    rng = np.random.default_rng(0)
    classes, per_class = 10, 100
    centres = rng.standard_normal((classes, DIM))
    texts = centres + 1.5 * rng.standard_normal((classes, DIM))
    items = np.repeat(centres, per_class, axis=0) + 6.0 * rng.standard_normal((classes * per_class, DIM))
    truth = np.repeat(np.arange(classes), per_class)
    examples = {str(c): (centres[c] + 6.0 * rng.standard_normal(DIM))[None] for c in range(classes)}
    text_of = {str(c): texts[c] for c in range(classes)}

    def accuracy(protos):
        units = items / np.linalg.norm(items, axis=1, keepdims=True)
        return float(np.mean((units @ protos.T).argmax(axis=1) == truth))

    alone = accuracy(prototypes(examples, None, 0.0))
    blended = accuracy(prototypes(examples, text_of, 1.0))
    assert blended > alone + 0.1, (alone, blended)


def test_few_shot_cli_round_trip(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        write_wav(media / f"low{i}.wav", tone(2.0, 16000, freq=200 + 10 * i, noise=0.01, seed=i), 16000)
        write_wav(media / f"high{i}.wav", tone(2.0, 16000, freq=3000 + 10 * i, noise=0.01, seed=i), 16000)
    examples = tmp_path / "examples"
    for label, freq in (("low_hum", 220), ("high_whistle", 3100)):
        (examples / label).mkdir(parents=True)
        write_wav(examples / label / "example.wav", tone(2.0, 16000, freq=freq, noise=0.01, seed=9), 16000)
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
    Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32")).index(
        [media], workers=0
    )
    argv = ["classify", "--db", str(tmp_path / "db"), "--examples", str(examples), "--checkpoint", str(checkpoint)]
    result = runner.invoke(app, [*argv, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["uri"].rsplit("/", 1)[1][:3]: r["label"] for r in rows} == {"low": "low_hum", "hig": "high_whistle"}

    table = runner.invoke(app, [*argv, "--sort", "score", "--text-weight", "0.5"])
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "score", "label", "modality", "uri"]  # a header row, naming the id sorted by
    scores = [float(line.split()[1]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 6
    out = tmp_path / "labels.csv"
    written = runner.invoke(app, [*argv, "--output", str(out), "--min-confidence", "0.0"])
    assert written.stdout.strip() == f"{out}: 6 items labelled" and out.read_text().count("\n") == 7
    none = runner.invoke(app, [*argv, "--min-confidence", "1.01", "--json"])
    assert none.exit_code == 0 and json.loads(none.stdout) == []
    both = runner.invoke(app, [*argv, "--labels", "a,b"])
    assert both.exit_code == 2 and "either labels" in both.output
    (examples / "empty").mkdir()
    assert "labels without example files: empty" in runner.invoke(app, argv).output


def test_a_handful_of_items_is_calibrated_toward_a_prior_not_by_its_own_noise():
    """With 2 items every hit scored exactly +-0.67; with 4 texts a text at raw -0.0036 outranked a
    byte-identical image at 1.000. Few items shrink toward a prior; many decide alone."""
    rng = np.random.default_rng(2)
    query = np.eye(DIM, dtype=np.float32)[0]
    two = at_cosine(query, np.array([0.10, 0.12], np.float32), rng)
    calibration = Calibration.from_sample(query, two)
    assert abs(calibration(0.12)) != pytest.approx(0.6745, abs=0.01) and calibration.spread > 0.05
    texts = at_cosine(query, np.array([-0.0040, -0.0038, -0.0035, -0.0030], np.float32), rng)
    images = at_cosine(query, rng.normal(0.35, 0.05, 2000).astype(np.float32), rng)
    text_hit = Calibration.from_sample(query, texts)(-0.0036)
    image_hit = Calibration.from_sample(query, images)(1.0)
    assert image_hit > text_hit
    many = Calibration.from_sample(query, images)  # from PRIOR_ITEMS items on: unchanged
    cosines = images @ query
    assert many.centre == pytest.approx(float(np.median(cosines)), abs=1e-6)
