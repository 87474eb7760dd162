"""When, where and with what: EXIF written by the tests (PIL writes the Exif and GPS blocks), read at index
time into the ``items`` columns, filtered (``--where``, ``--near``) and ordered (``--sort``) in searches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin
from typer.testing import CliRunner

from xsearch.capture import CAPTURE_COLUMNS, container_tags, describe, distance_km, exif_tags
from xsearch.cli.main import app
from xsearch.model import save_random_checkpoint

runner = CliRunner()

EIFFEL = (48.8580556, 2.2944444)
COLOSSEUM = (41.8902, 12.4922)


def _dms(angle: float) -> tuple[float, float, float]:
    angle = abs(angle)
    degrees = int(angle)
    minutes = int((angle - degrees) * 60)
    return float(degrees), float(minutes), round((angle - degrees - minutes / 60) * 3600, 2)


def photo(path: Path, seed: int, taken: str | None = None, zone: str | None = None, place=None, camera=None):
    """A JPEG with the EXIF a phone writes: capture time (and zone), GPS, make, model, lens, orientation."""
    pixels = (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    if camera:
        exif[0x010F], exif[0x0110] = camera
        exif[0x0112] = 1
    details = exif.get_ifd(0x8769)
    if taken:
        details[0x9003] = taken
    if zone:
        details[0x9011] = zone
    if camera:
        details[0xA434] = "RF24-105mm F4 L IS USM"
    if place:
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = ("N" if place[0] >= 0 else "S"), _dms(place[0])
        gps[3], gps[4] = ("E" if place[1] >= 0 else "W"), _dms(place[1])
        gps[5], gps[6] = b"\x00", 35.0
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def test_a_phones_exif_becomes_columns_with_its_time_zone(tmp_path):
    made = photo(tmp_path / "p.jpg", 0, "2024:06:01 18:03:00", "+02:00", EIFFEL, ("Canon", "Canon EOS R5"))
    tags = exif_tags(Image.open(made))
    assert tags["taken"] == "2024-06-01T18:03:00" and tags["taken_zone"] == "+02:00"
    assert tags["latitude"] == pytest.approx(EIFFEL[0], abs=1e-4)
    assert tags["longitude"] == pytest.approx(EIFFEL[1], abs=1e-4)
    assert tags["altitude"] == 35.0 and tags["orientation"] == 1 and tags["lens"] == "RF24-105mm F4 L IS USM"
    assert describe(tags) == "2024-06-01 18:03 +02:00 · 48.8581, 2.2944 · Canon EOS R5"
    assert set(tags) <= set(CAPTURE_COLUMNS)


def test_a_photo_without_exif_and_local_time_without_a_zone(tmp_path):
    assert exif_tags(Image.open(photo(tmp_path / "bare.jpg", 0))) == {}
    local = exif_tags(Image.open(photo(tmp_path / "local.jpg", 0, "2019:12:31 23:59:59")))
    assert local == {"taken": "2019-12-31T23:59:59"}  # no zone said: local time of an unknown zone


def test_hostile_exif_is_dropped_field_by_field(tmp_path):
    pixels = np.zeros((32, 32, 3), np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "X" * 5000  # a "camera name" of 5,000 characters
    exif[0x0110] = "Pixel 8\x00\x01"  # kept, without its control characters
    exif[0x0112] = 99  # no such orientation
    details = exif.get_ifd(0x8769)
    details[0x9003] = "9999:01:01 00:00:00"  # after tomorrow
    details[0x9011] = "+99:00"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (TiffImagePlugin.IFDRational(1, 0), 0.0, 0.0)  # NaN degrees
    gps[3], gps[4] = "E", (2.0, 17.0, 40.0)  # half a place is no place
    gps[6] = TiffImagePlugin.IFDRational(1, 0)
    Image.fromarray(pixels).save(tmp_path / "hostile.jpg", exif=exif)
    assert exif_tags(Image.open(tmp_path / "hostile.jpg")) == {"camera_model": "Pixel 8"}
    old = tmp_path / "old.jpg"
    photo(old, 1, "1700:01:01 00:00:00", place=(91.5, 2.0))  # before photography; north of the pole
    assert exif_tags(Image.open(old)) == {}


def test_container_tags_of_a_video():
    tags = container_tags(
        {"creation_time": "2024-06-01T16:03:00.000000Z", "location": "+48.8577+002.2950+035.000/", "make": "Apple"}
    )
    assert tags == {
        "taken": "2024-06-01T16:03:00",
        "taken_zone": "+00:00",
        "latitude": 48.8577,
        "longitude": 2.295,
        "altitude": 35.0,
        "camera_make": "Apple",
    }
    assert container_tags({"creation_time": "soon", "location": "+95+000/"}) == {}


def test_distances_on_the_sphere():
    assert distance_km(*EIFFEL, *COLOSSEUM) == pytest.approx(1106, abs=5)
    assert distance_km(0, 179.9, 0, -179.9) == pytest.approx(22.2, abs=0.2)  # across the antimeridian


# ---- indexed and searched -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trips(tmp_path_factory):
    root = tmp_path_factory.mktemp("trips")
    checkpoint = save_random_checkpoint(root / "trial.pt", "tiny_test", seed=0)
    media = root / "media"
    media.mkdir()
    photo(media / "paris.jpg", 1, "2024:06:01 18:03:00", "+02:00", EIFFEL, ("Canon", "Canon EOS R5"))
    photo(media / "rome.jpg", 2, "2023:04:10 09:00:00", "+02:00", COLOSSEUM, ("Apple", "iPhone 15"))
    photo(media / "home.jpg", 3, "2024:12:24 20:00:00")
    photo(media / "scan.jpg", 4)  # no EXIF at all
    db = root / "db"
    argv = ["index", str(media), "--db", str(db), "--checkpoint", str(checkpoint), "--precision", "fp32"]
    assert runner.invoke(app, argv).exit_code == 0
    return {"db": db, "checkpoint": checkpoint, "media": media}


def _search(trips, *args: str) -> list[dict]:
    argv = ["search", "--db", str(trips["db"]), "--checkpoint", str(trips["checkpoint"]), "--precision", "fp32"]
    result = runner.invoke(app, [*argv, "--text", "a trip", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


def _names(hits) -> list[str]:
    return [Path(hit["uri"]).stem for hit in hits]


def test_results_carry_when_where_and_with_what(trips):
    hits = {Path(hit["uri"]).stem: hit["metadata"] for hit in _search(trips)}
    assert hits["paris"]["taken"] == "2024-06-01T18:03:00" and hits["paris"]["camera_model"] == "Canon EOS R5"
    assert "taken" not in hits["scan"] and "latitude" not in hits["scan"]
    table = runner.invoke(
        app, ["search", "--db", str(trips["db"]), "--checkpoint", str(trips["checkpoint"]), "--text", "a trip"]
    )
    assert "[2024-06-01 18:03 +02:00 · 48.8581, 2.2944 · Canon EOS R5]" in table.output


def test_where_on_the_date_and_near_a_place(trips):
    assert sorted(_names(_search(trips, "--where", "taken >= '2024-01-01'"))) == ["home", "paris"]
    assert _names(_search(trips, "--near", f"{EIFFEL[0]},{EIFFEL[1]},10")) == ["paris"]
    assert sorted(_names(_search(trips, "--near", "45,7,600"))) == ["paris", "rome"]  # both within 600 km
    assert _names(_search(trips, "--near", "0,0,100")) == []
    bad = runner.invoke(app, ["search", "--db", str(trips["db"]), "--text", "x", "--near", "95,0,10"])
    assert bad.exit_code == 2 and "latitude -90..90" in bad.output


def test_sort_by_date_comes_after_the_cut_offs(trips):
    everything = _search(trips)
    relevance = {Path(hit["uri"]).stem: hit["rank"] for hit in everything}
    kept = _names(everything[:3])  # what a cut-off between the third and the fourth keeps
    floor = (everything[2]["score"] + everything[3]["score"]) / 2
    newest = _search(trips, "--min-score", str(floor), "--sort", "-date")
    taken = {"paris": "2024-06-01", "rome": "2023-04-10", "home": "2024-12-24"}
    expected = sorted([n for n in kept if n in taken], key=taken.get, reverse=True) + [
        n for n in kept if n not in taken
    ]
    assert _names(newest) == expected  # the same three hits, newest first, the undated last
    oldest = _search(trips, "--sort", "date")
    assert _names(oldest) == ["rome", "paris", "home", "scan"]
    assert {Path(hit["uri"]).stem: hit["rank"] for hit in oldest} == relevance  # rank: the place by relevance


def test_a_database_made_before_gets_the_columns_and_refresh_fills_them(trips, tmp_path):
    import shutil

    from xsearch.store import Database

    db = Path(shutil.copytree(trips["db"], tmp_path / "db"))
    store = Database.open(db, model_id="tiny_test:random-0")
    blank = {name: None for name in CAPTURE_COLUMNS}
    store.update_columns({str(trips["media"] / f"{n}.jpg"): blank for n in ("paris", "rome", "home")})
    assert store.items().scan(["taken"])["taken"].null_count == 4  # as rows written before this change
    argv = ["index", str(trips["media"]), "--db", str(db), "--checkpoint", str(trips["checkpoint"])]
    plain = runner.invoke(app, [*argv, "--json"])
    assert json.loads(plain.stdout)["refreshed"] == 0  # unchanged files are not read again unless asked
    refreshed = runner.invoke(app, [*argv, "--refresh-metadata"])
    assert refreshed.exit_code == 0 and "capture tags read again: 4 photos and videos" in refreshed.output
    rows = {Path(r["uri"]).stem: r for r in Database.open(db).items().scan(["uri", "taken", "lens"]).to_pylist()}
    assert rows["paris"]["taken"] == "2024-06-01T18:03:00" and rows["paris"]["lens"] == "RF24-105mm F4 L IS USM"


def test_the_legacy_database_migrates_with_null_capture_columns(tmp_path):
    import shutil

    from xsearch.store import Database

    legacy = Path(__file__).parent / "data" / "legacy.db"
    copy = shutil.copytree(legacy, tmp_path / "legacy.db")
    held = Database.open(copy).model_id
    store = Database.open(copy, model_id=held)  # a writer: columns added, as nulls
    table = store.items().scan(["id", *CAPTURE_COLUMNS])
    assert set(CAPTURE_COLUMNS) <= set(table.schema.names) and table["taken"].null_count == table.num_rows


def test_the_api_page_and_contact_sheet_show_and_order_by_date(trips, tmp_path):
    from fastapi.testclient import TestClient

    from xsearch import Collection
    from xsearch.model.choice import ModelChoice
    from xsearch.server import create_app

    collection = Collection.open(trips["db"], choice=ModelChoice(str(trips["checkpoint"]), precision="fp32"))
    app_ = create_app(collection)
    client = TestClient(app_)
    body = client.post("/api/search", data={"text": ["a trip"], "sort": "-date", "near": "45,7,600"}).json()
    assert _names(body["results"]) == ["paris", "rome"]
    refused = client.post("/api/search", data={"text": ["x"], "sort": "sideways"})
    assert refused.status_code == 400 and "sort must be one of" in refused.json()["detail"]
    sheet = tmp_path / "sheet.html"
    argv = ["search", "--db", str(trips["db"]), "--checkpoint", str(trips["checkpoint"]), "--text", "a trip"]
    assert runner.invoke(app, [*argv, "--html", str(sheet)]).exit_code == 0
    assert "2024-06-01 18:03 +02:00 · 48.8581, 2.2944 · Canon EOS R5" in sheet.read_text()

    from serving import CHROMIUM_FLAGS, chromium, running

    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    with running(app_) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector(".target")
        page.fill("#text", "a trip")
        page.select_option("#sort", "-date")
        page.click("#search")
        page.wait_for_selector("#results .card")
        lines = page.locator("#results .card .taken").all_inner_texts()
        browser.close()
    assert lines[:3] == ["2024-12-24 20:00", "2024-06-01 18:03 +02:00 · 48.8581, 2.2944 · Canon EOS R5",
                         "2023-04-10 09:00 +02:00 · 41.8902, 12.4922 · Apple iPhone 15"]  # fmt: skip
