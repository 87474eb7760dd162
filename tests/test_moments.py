"""Moments: per-segment vectors of audio and video, found by time.

Honest with random weights because identical content embeds identically: a recording holds a distinctive
event at a known second among tones and noise, and the query is that event cut out on the segment grid; a
moment whose segment holds the event carries the event's own clip vector, which no other moment has.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from xsearch import Collection, Modality, Query, UsageError
from xsearch.cli.main import app as cli
from xsearch.encoder import Encoder
from xsearch.errors import QueryError
from xsearch.model import save_checkpoint
from xsearch.moments import MomentCfg, item_of, parse_clock, plan, split_item_time
from xsearch.options import IndexOptions, SearchOptions
from xsearch.preprocess.audio import AudioCfg, preprocess_audio, segment_clips
from xsearch.preprocess.video import VideoCfg, _clip_frames, _video_stream, decode_segments, frames_to_clips
from xsearch.server import create_app
from xsearch.testing.media import event_recording, gradient_image, tone, write_event_video, write_video, write_wav

RATE = 16000
runner = CliRunner()


def cut(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    return samples[int(start * RATE) : int(end * RATE)]


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(tiny_model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, encoder):
    """A 60 s recording with the event at 30 s, two distractor recordings without it, a 30 s video whose
    picture turns red at 12 s and whose sound track has the event at 20 s, and a photo; indexed with
    moments."""
    root = tmp_path_factory.mktemp("moments")
    media = root / "media"
    media.mkdir()
    talk = event_recording(60, RATE, event_at=30.0)
    files = {
        "talk": write_wav(media / "talk.wav", talk, RATE),
        "birds": write_wav(media / "birds.wav", event_recording(48, RATE, event_at=500.0, seed=1), RATE),
        "rain": write_wav(media / "rain.wav", event_recording(36, RATE, event_at=500.0, seed=2), RATE),
        "film": write_event_video(
            media / "film.mkv", 30, event_at=12.0, sound=event_recording(30, RATE, event_at=20.0, seed=3)
        ),
        "photo": gradient_image(media / "photo.jpg"),
    }
    queries = root / "queries"
    queries.mkdir()
    files["event"] = write_wav(queries / "event.wav", cut(talk, 30, 32), RATE)
    files["red"] = write_event_video(queries / "red.mkv", 2, event_at=0.0)
    collection = Collection(root / "db", encoder=encoder)
    report = collection.index([media], moments=True, workers=2)
    assert report.failed == 0, report.failures
    return root, files, collection, report


def uri(path: Path) -> str:
    return os.path.realpath(path)


def moment_rows(collection) -> list[dict]:
    return collection.store.moments().scan(["id", "item_id", "uri", "modality", "start", "end", "sha256"]).to_pylist()


# ---- cutting ---------------------------------------------------------------------------------------------


def test_segments_tile_the_file_and_the_last_one_ends_it():
    cfg = MomentCfg()
    assert cfg.spans(20.5) == [(0.0, 6.0), (6.0, 12.0), (12.0, 18.0), (18.0, 20.5)]
    assert cfg.clip_starts(6.0, 12.0) == [6.0, 8.0, 10.0]  # side by side: every second is heard
    assert cfg.clip_starts(18.0, 20.5) == [18.0, 18.5, 18.5]  # moved back to end at the file's end
    assert cfg.spans(1.0) == [(0.0, 1.0)]
    assert MomentCfg(6, 3).spans(13) == [(0.0, 6.0), (3.0, 9.0), (6.0, 12.0), (9.0, 13)]
    for bad in ({"seconds": 5}, {"seconds": 0}, {"seconds": 62}, {"seconds": 6, "stride": 0}):
        with pytest.raises(UsageError):
            MomentCfg(**bad)


def test_times_are_read_as_people_write_them():
    assert parse_clock("83") == 83 and parse_clock("1:23") == 83 and parse_clock("1:02:03.5") == 3723.5
    assert parse_clock("soon") is None and parse_clock("1.5:20") is None
    assert split_item_time("12@1:03") == ("12", 63.0)
    assert split_item_time("me@home.wav") == ("me@home.wav", None)  # a path with an @ stays a path
    assert IndexOptions.of(moments=True, moment_seconds=4).moments == MomentCfg(4)
    with pytest.raises(UsageError, match="ask for moments too"):
        IndexOptions.of(moment_seconds=4)  # a way of cutting alone does not turn moments on silently
    with pytest.raises(UsageError, match="per_file"):
        SearchOptions(per_file=2)  # counts moments: without them it means nothing
    with pytest.raises(UsageError, match="leave out --ray"):
        IndexOptions.of(moments=True, ray="local")  # moments are cut on one machine


def test_a_moments_audio_input_is_that_of_the_same_seconds_cut_out(corpus):
    _, files, _, _ = corpus
    moment = segment_clips(files["talk"], [[30.0, 32.0, 34.0]], AudioCfg())
    alone = preprocess_audio(files["event"], AudioCfg())  # the 2 s file: three equal clips
    assert moment.shape == (1, 3, 1, 128, 204)
    assert np.abs(moment[0, 0].numpy() - alone[0].numpy()).max() < 2e-3  # the reference's clip mean rounding


@pytest.mark.parametrize("rate, codec", [(44100, None), (48000, "mp3")])
def test_a_seek_into_a_long_file_gives_the_clips_of_a_whole_file_decode(tmp_path, rate, codec):
    """Moments of a long file decode only their span (one seek, on the resampler's grid): the same clips,
    to the bit, as resampling the whole file and cutting them out."""
    from xsearch.preprocess.audio import decode_audio, resample, waveform_to_fbank
    from xsearch.testing.media import write_audio

    samples = event_recording(200, rate, 100.0)
    path = tmp_path / ("long.wav" if codec is None else "long.mp3")
    write_wav(path, samples, rate) if codec is None else write_audio(path, samples, rate, codec)
    cfg = AudioCfg()
    segments = [[100.0, 102.0, 104.0], [150.0, 152.0, 154.0]]
    moments = segment_clips(path, segments, cfg)
    waveform, native = decode_audio(path)
    whole = resample(waveform, native, RATE)
    for s, starts in enumerate(segments):
        for c, start in enumerate(starts):
            clip = whole[:, int(start * RATE) : int((start + 2) * RATE)].clone()
            clip -= clip.mean()
            assert np.array_equal(moments[s, c].numpy(), ((waveform_to_fbank(clip, cfg) - cfg.mean) / cfg.std).numpy())


def test_video_segments_decoded_in_one_pass_match_a_seek_per_clip(corpus):
    import av

    _, files, _, _ = corpus
    cfg = VideoCfg(size=64)
    starts = [10.0, 12.0, 14.0]
    one_pass = decode_segments(files["film"], [starts], cfg)
    with av.open(str(files["film"])) as container:
        stream, _ = _video_stream(container, str(files["film"]), cfg)
        frames = [_clip_frames(container, stream, s, s + 2, 2) for s in starts]
    assert np.array_equal(one_pass[0].numpy(), frames_to_clips(frames, cfg).numpy())


# ---- indexing ----------------------------------------------------------------------------------------------


def test_every_audio_and_video_file_is_cut_along_its_whole_length(corpus):
    _, files, collection, report = corpus
    rows = moment_rows(collection)
    by_file: dict[tuple[str, str], list] = {}
    for row in rows:
        by_file.setdefault((Path(row["uri"]).stem, row["modality"]), []).append((row["start"], row["end"]))
    expected = {
        ("talk", "audio"): MomentCfg().spans(60),
        ("birds", "audio"): MomentCfg().spans(48),
        ("rain", "audio"): MomentCfg().spans(36),
        ("film", "video"): MomentCfg().spans(30),
        ("film", "audio"): MomentCfg().spans(30),  # its sound track: audio moments of the same file
    }
    assert {k: sorted(v) for k, v in by_file.items()} == expected
    assert report.moments == len(rows) == sum(len(v) for v in expected.values())
    assert all(item_of(r["id"]) == r["item_id"] for r in rows)
    assert collection.info()["moments"]["moments"] == len(rows)
    assert collection.info()["moments"]["by_modality"] == {"video": 5, "audio": 29}
    assert set(report.moment_indexes) == {"audio", "video"}


def test_item_vectors_are_the_same_with_moments_or_without(corpus, encoder, tmp_path):
    _, files, collection, _ = corpus
    plain = Collection(tmp_path / "plain.db", encoder=encoder)
    plain.index([files["talk"], files["film"]], workers=0)
    assert not plain.store.has_moments()
    for name in ("talk", "film"):
        with_moments = collection.item(uri(files[name]), ["embedding"])["embedding"]
        without = plain.item(uri(files[name]), ["embedding"])["embedding"]
        # The same decode and model path; only the batch mates differ (float sums in another order).
        assert np.allclose(np.asarray(with_moments), np.asarray(without), atol=1e-6)


# ---- searching ---------------------------------------------------------------------------------------------


def test_the_event_is_found_at_its_second_in_the_right_file(corpus):
    _, files, collection, _ = corpus
    results = collection.search(Query.audio(files["event"]), moments=True, target="audio", k=3)
    top = results[0]
    assert (top.uri, top.start, top.end) == (uri(files["talk"]), 30.0, 36.0)  # on the grid, holding 30-32 s
    assert top.modality is Modality.AUDIO and top.metadata["duration"] == 60.0
    assert len({r.uri for r in results}) == len(results)  # one moment per file by default
    assert results[1].score < top.score - 0.01


def test_a_video_sound_track_answers_for_when_it_is_heard(corpus):
    _, files, collection, _ = corpus
    results = collection.search(Query.audio(files["event"]), moments=True, target="audio", k=5)
    film = next(r for r in results if r.uri == uri(files["film"]))
    assert (film.start, film.end) == (18.0, 24.0)  # the event at 20 s of its sound track
    assert film.modality is Modality.AUDIO


def test_the_red_seconds_of_a_video_are_found(corpus):
    _, files, collection, _ = corpus
    results = collection.search(Query.video(files["red"]), moments=True, target="video", per_file=5)
    assert (results[0].start, results[0].end) == (12.0, 18.0)


def test_per_file_and_the_exact_grid_at_two_seconds(corpus, encoder, tmp_path):
    _, files, collection, _ = corpus
    several = collection.search(Query.audio(files["event"]), moments=True, target="audio", per_file=3, k=20)
    per_file = {}
    for r in several:
        per_file[r.uri] = per_file.get(r.uri, 0) + 1
    assert max(per_file.values()) == 3
    fine = Collection(tmp_path / "fine.db", encoder=encoder)
    fine.index([files["talk"]], moments=True, moment_seconds=2, workers=0)
    top = fine.search(Query.audio(files["event"]), moments=True)[0]
    assert (top.start, top.end) == (30.0, 32.0) and top.score > 0.9999  # the very clip


def test_more_like_this_moment(corpus):
    _, files, collection, _ = corpus
    talk = collection.item(uri(files["talk"]), ["id"])["id"]
    results = collection.search(Query.item(talk, at=31.5), moments=True, per_file=2)
    assert (results[0].id, results[0].start, results[0].score) == (talk, 30.0, pytest.approx(1.0, abs=1e-3))
    alone = collection.search(Query.item(talk, at=31.5), moments=True, exclude_query_items=True)
    assert all((r.id, r.start) != (talk, 30.0) for r in alone)
    with pytest.raises(QueryError, match="no moment at 1:40"):
        collection.search(Query.item(talk, at=100), moments=True)
    photo = collection.item(uri(files["photo"]), ["id"])["id"]
    with pytest.raises(QueryError, match="no moment"):
        collection.search(Query.item(photo, at=1), moments=True)


def test_filters_and_composed_queries_apply_to_moments(corpus):
    _, files, collection, _ = corpus
    late = collection.search(Query.audio(files["event"]), moments=True, where="start >= 40", per_file=10, k=50)
    assert late and all(r.start >= 40 for r in late)
    only = collection.search(Query.audio(files["event"]), moments=True, path=str(files["film"]), k=5)
    assert {r.uri for r in only} == {uri(files["film"])}
    mixed = Query.audio(files["event"]) * 0.7 + Query.video(files["red"]) * 0.3
    both = collection.search(mixed, moments=True, per_file=10, k=50)  # every moment: both tracks merge
    assert {r.modality for r in both} == {Modality.AUDIO, Modality.VIDEO}
    assert all(r.calibrated is not None for r in both)
    assert collection.search(Query.audio(files["event"]), moments=True, min_score=2.0) == []


def test_cli_index_search_json_and_table(corpus, encoder, tmp_path):
    root, files, _, _ = corpus
    checkpoint = save_checkpoint(encoder.model, tmp_path / "tiny.pt")
    model = ["--model", "tiny_test"]
    db = tmp_path / "cli.db"
    done = runner.invoke(
        cli, ["index", str(files["talk"]), "--db", str(db), "--checkpoint", str(checkpoint), "--moments", "-q", *model]
    )
    assert done.exit_code == 0, done.output
    again = runner.invoke(
        cli, ["index", str(files["talk"]), "--db", str(db), "--checkpoint", str(checkpoint), "--json", *model]
    )
    assert json.loads(again.output)["unchanged"] == 1  # remembered: no --moments needed, nothing to redo
    found = runner.invoke(
        cli,
        ["search", "--db", str(db), "--checkpoint", str(checkpoint), "--audio", str(files["event"]), "--moments"],
    )
    assert found.exit_code == 0, found.output
    assert f"{uri(files['talk'])} @ 0:30-0:36" in found.output
    talk = Collection(db).item(uri(files["talk"]), ["id"])["id"]
    shown = runner.invoke(cli, ["search", "--db", str(db), "--item", f"{talk}@0:31", "--moments", "--json"])
    assert shown.exit_code == 0, shown.output
    first = json.loads(shown.output)["results"][0]
    assert (first["id"], first["start"], first["end"], first["uri"]) == (talk, 30.0, 36.0, uri(files["talk"]))
    info = runner.invoke(cli, ["info", "--db", str(db)])
    assert "moments   10  (6 s every 6 s)" in info.output
    mixed = runner.invoke(
        cli,
        [
            "index",
            str(files["talk"]),
            "--db",
            str(db),
            "--checkpoint",
            str(checkpoint),
            "--moments",
            "--moment-seconds",
            "4",
            *model,
        ],
    )
    assert mixed.exit_code == 2 and "cannot mix in 4 s" in mixed.output


def test_serve_returns_moments_with_players_that_start_there(corpus):
    _, files, collection, _ = corpus
    client = TestClient(create_app(collection))
    talk = collection.item(uri(files["talk"]), ["id"])["id"]
    response = client.post("/api/search", data={"item": f"{talk}@31", "moments": "true", "per_file": "2"})
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert (hits[0]["start"], hits[0]["end"]) == (30.0, 36.0)
    assert hits[0]["media_url"].endswith("#t=30,36")
    media = client.get(hits[0]["media_url"].split("#")[0], headers={"Range": "bytes=0-99"})
    assert media.status_code == 206
    assert client.get("/api/info").json()["moments"]["moments"] > 0
    page = client.get("/").text
    assert 'id="moments"' in page and "timeline" in page


def test_the_page_finds_moments_and_its_players_start_there(corpus, tmp_path):
    from serving import CHROMIUM_FLAGS, chromium, running

    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    _, files, collection, _ = corpus
    with running(create_app(collection)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(url + "/")
        page.wait_for_selector("#moment-controls:not([hidden])")  # the database keeps moments
        page.set_input_files("#picker", str(files["event"]))
        page.check("#moments")
        page.fill("#per-file", "2")
        for other in ("image", "video"):  # sounds only: random weights rank across modalities at random
            page.uncheck(f".target[value={other}]")
        page.click("#search")
        page.wait_for_selector("#results .card .when")
        first = page.locator("#results .card").first
        assert first.locator(".when").inner_text() == "@ 0:30-0:36"
        assert first.locator("audio").get_attribute("src").endswith("#t=30,36")
        assert first.locator(".timeline span.this").count() == 1
        assert page.locator("#results .card").count() <= 2 * 4  # at most two per file
        first.locator(".more").click()  # more like this moment: ID@SECONDS joins the query
        page.wait_for_function("() => document.querySelectorAll('.input').length === 2")
        assert page.locator(".input .name").last.inner_text().endswith("talk.wav @ 0:30")
        page.wait_for_selector("#results .card .when")
        assert page.locator("#status.error").count() == 0
        browser.close()


def test_contact_sheet_plays_the_moment_and_shows_where_it_is(corpus, tmp_path):
    from xsearch.contact_sheet import render

    _, files, collection, _ = corpus
    talk = collection.item(uri(files["talk"]), ["id"])["id"]
    results = collection.search(Query.item(talk, at=31), moments=True, per_file=2)
    page = render(results, link_originals=True)
    assert "@ 0:30-0:36" in page and 'class="timeline"' in page and "left:50.00%" in page
    assert "#t=30,36" in page and "<audio controls" in page


# ---- changes, pruning, kills -------------------------------------------------------------------------------


def test_a_changed_file_gets_its_new_moments_and_a_pruned_one_loses_them(encoder, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    talk = event_recording(30, RATE, event_at=6.0)
    write_wav(media / "talk.wav", talk, RATE)
    write_wav(media / "other.wav", event_recording(24, RATE, event_at=500.0, seed=1), RATE)
    event = write_wav(tmp_path / "event.wav", cut(talk, 6, 8), RATE)
    collection = Collection(tmp_path / "db", encoder=encoder)
    collection.index([media], moments=True, workers=0)
    first = collection.search(Query.audio(event), moments=True)[0]
    assert (Path(first.uri).name, first.start) == ("talk.wav", 6.0)
    write_wav(media / "talk.wav", event_recording(42, RATE, event_at=24.0), RATE)  # longer, event later
    os.utime(media / "talk.wav", (time.time() + 5, time.time() + 5))
    report = collection.index([media], workers=0)
    assert report.updated == 1
    rows = [r for r in moment_rows(collection) if r["uri"].endswith("talk.wav")]
    assert sorted((r["start"], r["end"]) for r in rows) == MomentCfg().spans(42)  # one set, the new one
    assert len({r["sha256"] for r in rows}) == 1
    moved = collection.search(Query.audio(event), moments=True)[0]
    assert (Path(moved.uri).name, moved.start) == ("talk.wav", 24.0)
    (media / "other.wav").unlink()
    collection.index([media], prune=True, workers=0)
    assert {Path(r["uri"]).name for r in moment_rows(collection)} == {"talk.wav"}
    assert collection.info()["moments"]["indices"]["audio"]["count"] == 7


def test_a_touched_file_gets_its_moments_in_the_run_that_asks_for_them(encoder, tmp_path):
    """A file indexed without moments, then touched (same bytes, new mtime): the run with --moments cuts it
    then, not only on the run after (its same bytes must not make it "unchanged" and uncut)."""
    media = tmp_path / "media"
    media.mkdir()
    wav = write_wav(media / "a.wav", event_recording(18, RATE, event_at=6.0), RATE)
    collection = Collection(tmp_path / "db", encoder=encoder)
    collection.index([media], workers=0)
    os.utime(wav, (time.time() + 60, time.time() + 60))
    report = collection.index([media], moments=True, workers=0)
    assert report.moments == 3 and report.updated == 1 and report.unchanged == 0
    assert collection.store.moments().count() == 3


def test_moments_lost_between_two_commits_are_made_again(encoder, tmp_path, monkeypatch):
    """The file's row commits first and its moments second: a run killed between them leaves a row
    without moments, which the next run sees and embeds again."""
    from xsearch.store import Database

    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "a.wav", event_recording(18, RATE, event_at=6.0), RATE)
    collection = Collection(tmp_path / "db", encoder=encoder)

    def killed(self, records):
        raise RuntimeError("killed between the commits")

    monkeypatch.setattr(Database, "replace_moments", killed)
    with pytest.raises(RuntimeError, match="killed"):
        collection.index([media], moments=True, workers=0)
    monkeypatch.undo()
    assert collection.store.items().count() == 1 and collection.store.moments().count() == 0
    report = collection.index([media], workers=0)
    assert report.moments_added == 1 and report.updated == 0 and report.moments == 3
    assert collection.store.moment_sets() == {0: {collection.item(0, ["sha256"])["sha256"]}}


def test_a_chunk_of_moments_is_bounded_by_the_per_file_time_limit(tmp_path):
    from xsearch.decode.pool import DecodePool
    from xsearch.decode.work import Task
    from xsearch.options import DecodeLimits

    from faulty import hangs_on_late_moments

    path = write_wav(tmp_path / "long.wav", event_recording(120, RATE, 30.0), RATE)
    task = Task(str(path), Modality.AUDIO, path.stat().st_size, path.stat().st_mtime)
    pool = DecodePool(hangs_on_late_moments, 1, DecodeLimits(seconds=3))
    prepared = list(pool.imap_unordered([task]))
    outcomes = [outcome for outcome, _ in prepared]
    assert len(outcomes) == 3  # the file, then its two chunks of moments (50 + 10 segments of 2 s)
    assert outcomes[0].task == task and len(prepared[0].follow_up) == 2  # beside the file's outcome
    assert [len(follow_up) for _, follow_up in prepared[1:]] == [0, 0]
    assert outcomes[1].error is None and outcomes[1].tensor.shape[:2] == (50, 1)
    assert outcomes[2].error == "timed out after 3 s" and outcomes[2].task.spans[0] == (100.0, 102.0)


def test_a_file_whose_moments_fail_keeps_its_row_and_is_not_decoded_again_until_retry(encoder, tmp_path, monkeypatch):
    import xsearch.moments
    from xsearch.errors import DecodeError

    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "good.wav", event_recording(12, RATE, 3.0), RATE)
    broken = write_wav(media / "broken.wav", event_recording(400, RATE, 3.0), RATE)
    real = xsearch.moments._segment_tensor

    def fails_late(task, segments, cfg):
        if task.path == str(broken) and task.spans[0][0] >= 300:
            raise DecodeError(task.path, "audio data is corrupt (Invalid data found)")
        return real(task, segments, cfg)

    monkeypatch.setattr(xsearch.moments, "_segment_tensor", fails_late)
    collection = Collection(tmp_path / "db", encoder=encoder)
    report = collection.index([media], moments=True, workers=0)
    assert report.failed == 1 and report.failures[0].stage == "moments"
    assert report.failures[0].message == "audio moments 5:00-6:40: audio data is corrupt (Invalid data found)"
    assert sorted(Path(r["uri"]).name for r in collection.store.items().scan(["uri"]).to_pylist()) == [
        "broken.wav",
        "good.wav",
    ]
    assert {Path(r["uri"]).name for r in moment_rows(collection)} == {"good.wav"}  # one set or none: never half
    errors = collection.store.error_rows().to_pylist()
    assert [(Path(e["uri"]).name, e["stage"]) for e in errors] == [("broken.wav", "moments")]  # `xsearch errors`
    decoded = []
    monkeypatch.setattr(xsearch.moments, "_segment_tensor", lambda *a: decoded.append(a) or fails_late(*a))
    same = collection.index([media], workers=0)  # the same bytes: its 400 s are not decoded again each run
    assert decoded == [] and same.moments_not_retried == 1 and same.unchanged == 2 and same.failed == 0
    assert len(collection.store.error_rows()) == 1  # still listed
    monkeypatch.undo()  # the damage was passing: --retry makes its moments
    again = collection.index([media], workers=0, retry=True)
    assert again.failed == 0 and again.moments_added == 1 and again.updated == 0 and again.moments == 67
    assert {Path(r["uri"]).name for r in moment_rows(collection)} == {"good.wav", "broken.wav"}
    assert len(collection.store.error_rows()) == 0


def test_copies_fold_into_one_moment_and_a_database_without_moments_says_so(encoder, tmp_path):
    from xsearch.errors import StoreError

    media = tmp_path / "media"
    media.mkdir()
    talk = event_recording(18, RATE, 6.0)
    write_wav(media / "a.wav", talk, RATE)
    write_wav(media / "b.wav", talk, RATE)  # the same bytes
    event = write_wav(tmp_path / "event.wav", cut(talk, 6, 8), RATE)
    collection = Collection(tmp_path / "db", encoder=encoder)
    collection.index([media], moments=True, workers=0)
    top = collection.search(Query.audio(event), moments=True)
    assert (Path(top[0].uri).name, top[0].start, [Path(d).name for d in top[0].duplicates]) == ("a.wav", 6.0, ["b.wav"])
    assert len(top) == 1  # b.wav's moments fold into a.wav's, and a.wav gives one
    plain = Collection(tmp_path / "plain", encoder=encoder)
    plain.index([media / "a.wav"], workers=0)
    with pytest.raises(StoreError, match="run xsearch index --moments"):
        plain.search(Query.audio(event), moments=True)


_INDEX_SCRIPT = """
import sys
from xsearch import Collection
from xsearch.encoder import Encoder
from xsearch.model import load_checkpoint
encoder = Encoder(load_checkpoint(sys.argv[3], "tiny_test"), device="cpu", precision="fp32")
Collection(sys.argv[1], encoder=encoder).index([sys.argv[2]], moments=True, workers=1, commit_every=1)
"""


@pytest.mark.slow
def test_kill_9_leaves_one_moment_set_per_file(encoder, tmp_path):
    from xsearch.store import Database

    media = tmp_path / "media"
    media.mkdir()
    for i in range(10):
        write_wav(media / f"r{i}.wav", event_recording(90 + 6 * i, RATE, event_at=12.0, seed=i), RATE)
    checkpoint = save_checkpoint(encoder.model, tmp_path / "tiny.pt")
    db = tmp_path / "db"

    def committed() -> int:  # files committed so far (one commit per file)
        try:
            return Database.open(db, create=False).items().count()
        except Exception:  # not created yet
            return 0

    rng = np.random.default_rng(0)
    killed = 0
    for _ in range(4):
        before = committed()
        run = subprocess.Popen([sys.executable, "-c", _INDEX_SCRIPT, str(db), str(media), str(checkpoint)])
        while run.poll() is None and committed() == before:  # a commit: the run is in the middle of its files
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        killed += run.poll() is None  # still running: killed in the middle of something
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert killed == 4 and 0 < committed() < 10
    done = subprocess.run([sys.executable, "-c", _INDEX_SCRIPT, str(db), str(media), str(checkpoint)], check=True)
    assert done.returncode == 0
    collection = Collection(db)
    rows = moment_rows(collection)
    items = {r["id"]: r for r in collection.store.items().scan(["id", "uri", "sha256", "duration"]).to_pylist()}
    assert len(items) == 10
    for item_id, item in items.items():
        mine = [r for r in rows if r["item_id"] == item_id]
        assert sorted((r["start"], r["end"]) for r in mine) == MomentCfg().spans(item["duration"])  # one set
        assert {r["sha256"] for r in mine} == {item["sha256"]}
    assert len({r["id"] for r in rows}) == len(rows)


def test_a_small_moments_index_keeps_its_vectors_once(corpus):
    """Below the IVF-PQ threshold the index is exact; over moments (float16 at the source) its vectors stay
    in the float16 re-rank rows alone, not also in a float32 FAISS file: 2.5 MB per hour, not 4.9."""
    _, _, collection, _ = corpus
    folder = collection.path / "faiss-moments" / "audio"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "flat" and meta["vectors_in_rows"] and meta["segments"][0]["in_rows"]
    assert (folder / "seg-0.faiss").stat().st_size < 1000
    assert (folder / "rows.f16").stat().st_size == 29 * 1024 * 2
    status = collection.info(check=True)["moments"]["indices"]["audio"]
    assert status == {"kind": "flat", "count": 29, "fresh": True}


@pytest.mark.slow
def test_an_hour_of_audio_indexes_in_the_memory_of_two_minutes(tmp_path):
    """Moments stream in chunks: a 1-hour file adds at most 1.5x the memory a 2-minute one does."""
    from measure import peak_rss_growth_mb

    grown = {}
    for minutes in (2, 60):
        path = write_wav(tmp_path / f"{minutes}.wav", event_recording(minutes * 60, RATE, 30.0), RATE)
        loaded = (  # the model is loaded before the measure starts: what grows is the run's own
            "from xsearch import Collection\nfrom xsearch.encoder import Encoder\n"
            "from xsearch.model import create_model\n"
            "encoder = Encoder(create_model('tiny_test'), device='cpu', precision='fp32')\n"
        )
        db = tmp_path / str(minutes)
        code = f"Collection({str(db)!r}, encoder=encoder).index([{str(path)!r}], moments=True, workers=0)"
        grown[minutes] = peak_rss_growth_mb(code, loaded)
    assert grown[60] <= 1.5 * grown[2], grown


def test_deleting_many_rows_deletes_their_moments_in_one_go(tmp_path):
    """``--prune`` of thousands of files: the ids whose moments go are read without the 16 KB cap on a
    user's filter."""
    from xsearch.store import Database, ItemRecord, Moment

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=8)
    store.keep_moments(MomentCfg())
    vector = np.eye(8, dtype=np.float32)[0]
    records = [
        ItemRecord(
            f"/media/{i:05d}.wav", Modality.AUDIO, vector, sha256=str(i), moments=[Moment(Modality.AUDIO, 0, 6, vector)]
        )
        for i in range(3)
    ]
    store.upsert_items(records)
    store.replace_moments(records)
    assert store.moments().count() == 3
    store.delete_items(uris=[f"/media/{i:05d}.wav" for i in range(2, 3000)])  # 50 KB of SQL
    assert store.moments().count() == 2 and store.moment_sets() == {0: {"0"}, 1: {"1"}}


def _claim_duration(path, seconds: float) -> None:
    """Rewrite a Matroska file's Segment Duration (an 8-byte float in milliseconds) to ``seconds``."""
    import struct

    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # the Duration element, 8 bytes long
    assert at > 0, "no 8-byte Duration element in the test file"
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    path.write_bytes(data)


def test_a_video_whose_header_claims_hours_is_as_long_as_its_frames(tmp_path):
    """10 s of video that says 2 h (or 1e9 s) is decoded and cut as 10 s, not seeked through for hours; a
    sound track of 2 s in a 12 s video has one audio moment, not six of silence."""
    from xsearch.moments import _sound_track_seconds
    from xsearch.preprocess.video import decode_video

    for claimed in (7200.0, 1e9):
        clip = write_video(tmp_path / f"lying-{claimed:g}.mkv", seconds=10.0)
        _claim_duration(clip, claimed)
        _, duration = decode_video(clip, VideoCfg())
        assert 9.0 <= duration <= 10.5, (claimed, duration)
        tasks = plan(str(clip), Modality.VIDEO, 1, 1.0, duration, MomentCfg())
        assert sum(len(t.spans) for t in tasks) == 2  # 0-6 s and 6-10 s
    short_sound = write_event_video(
        tmp_path / "quiet.mkv", seconds=12.0, event_at=1.0, sound=tone(2.0, 16000)[:, :1], rate=16000
    )
    heard = _sound_track_seconds(str(short_sound))
    assert heard is not None and heard <= 3.0, heard
    tracks = plan(str(short_sound), Modality.VIDEO, 1, 1.0, 12.0, MomentCfg())
    assert [len(t.spans) for t in tracks if t.modality is Modality.AUDIO] == [1]
