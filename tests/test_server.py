"""``xsearch serve``: the JSON API through FastAPI's TestClient, and the page in Debian's chromium."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from xsearch import Collection, Modality, UsageError
from xsearch.cli.main import app as cli
from xsearch.encoder import Encoder
from xsearch.server import create_app
from xsearch.store import ItemRecord
from xsearch.testing.media import gradient_image, tone, write_imu, write_video, write_wav

from serving import CHROMIUM_FLAGS, chromium, running


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("served")
    files = {
        "red": gradient_image(root / "red.jpg", seed=1),
        "blue": gradient_image(root / "blue.png", seed=2),
        "tone": write_wav(root / "tone.wav", tone(2.0, 16000), 16000),
        "clip": write_video(root / "clip.mp4", seconds=2.0),
    }
    (root / "imu").mkdir()
    files["walk"] = write_imu(root / "imu" / "walk.npy")
    collection = Collection.open(root.parent / "served.db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    collection.index([root], workers=0)
    return root, files, collection


@pytest.fixture(scope="module")
def client(media):
    return TestClient(create_app(media[2], max_upload_bytes=2_000_000))


def ids(collection) -> dict[str, int]:
    table = collection.store.items().scan(["id", "uri"])
    return {Path(u).stem: i for i, u in zip(table["id"].to_pylist(), table["uri"].to_pylist())}


def test_multipart_search_with_files_weights_and_text(client, media):
    root, files, _ = media
    with open(files["red"], "rb") as photo, open(files["tone"], "rb") as sound:
        upload = [("files", ("query.jpg", photo, "image/jpeg")), ("files", ("q.wav", sound, "audio/wav"))]
        data = {"file_weight": ["0.7", "0.3"], "file_modality": ["", "audio"], "text": ["a red door"], "k": "3"}
        data["text_weight"] = ["-0.2"]
        response = client.post("/api/search", files=upload, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(t["kind"], t.get("modality"), t["weight"]) for t in body["query"]] == [
        ("file", "image", 0.7),
        ("file", "audio", 0.3),
        ("text", "text", -0.2),
    ]
    assert len(body["results"]) == 3
    hit = body["results"][0]
    assert {"score", "calibrated", "uri", "thumbnail_url", "media_url", "duplicates"} <= set(hit)
    assert client.get(hit["thumbnail_url"]).headers["content-type"] == "image/jpeg"


def test_search_by_stored_item_finds_itself(client, media):
    _, _, collection = media
    red = ids(collection)["red"]
    body = client.post("/api/search", data={"item": [str(red)], "target": "image", "k": "1"}).json()
    assert body["results"][0]["id"] == red and body["results"][0]["score"] > 0.999


@pytest.mark.parametrize(
    "data, status, words",
    [
        ({}, 422, "at least one input"),
        ({"item": ["999999"]}, 404, "no indexed item"),
        ({"item": ["0"], "target": "smell"}, 400, "unknown modality 'smell'"),
        ({"item": ["0"], "where": "nope > 1"}, 400, "no column named nope"),
        ({"item": ["0"], "path": "photos/*"}, 400, "a relative one would be read from the server's own folder"),
        ({"item": ["0"], "path": "~/photos/*"}, 400, "give an absolute glob"),
    ],
)
def test_search_errors(client, data, status, words):
    response = client.post("/api/search", data=data)
    assert response.status_code == status and words in response.json()["detail"]


def test_undecodable_and_oversized_uploads(client):
    bad = client.post("/api/search", files=[("files", ("holiday.jpg", b"not a photo", "image/jpeg"))])
    assert bad.status_code == 400
    assert "holiday.jpg: its content is text, not image" in bad.json()["detail"]
    assert "xsearch-upload" not in bad.json()["detail"]  # the client's name, not our temporary path
    big = client.post("/api/search", files=[("files", ("big.wav", b"\0" * 2_500_000, "audio/wav"))])
    assert big.status_code == 413


def test_items_metadata_thumbnail_and_media_with_ranges(client, media):
    root, files, collection = media
    known = ids(collection)
    meta = client.get(f"/api/items/{known['red']}").json()
    assert meta["uri"] == str(files["red"]) and meta["width"] == 320 and "embedding" not in meta
    assert client.get(f"/api/items/{known['walk']}/thumbnail").content[:3] == b"\xff\xd8\xff"  # an IMU plot
    whole = client.get(f"/api/items/{known['tone']}/media")
    assert whole.status_code == 200 and whole.content == files["tone"].read_bytes()
    part = client.get(f"/api/items/{known['clip']}/media", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == files["clip"].read_bytes()[:100]
    assert client.get("/api/items/999999").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/items/..%2f..%2fetc%2fpasswd/media",
        "/api/items/%2fetc%2fpasswd/media",
        "/api/items/../../etc/passwd",
        "/api/items/-1/media",
        "/api/items/1e3/media",
        "/api/items/99999999999999999999999/media",  # past int64: 404, not a 500
    ],
)
def test_media_only_by_id(client, path):
    assert client.get(path).status_code == 404


def test_info_and_classify(client, media):
    """The labels over HTTP are the library's: the same items (the two pictures), labels and scores."""
    info = client.get("/api/info").json()
    assert info["by_modality"] == {"image": 2, "video": 1, "audio": 1, "imu": 1}
    labels = client.post("/api/classify", data={"labels": "red,sound", "target": "image"}).json()
    expected = media[2].classify(["red", "sound"], target="image").as_json()
    assert {Path(row["uri"]).stem for row in labels} == {"red", "blue"}
    assert [(r["id"], r["label"], round(r["score"], 6)) for r in labels] == [
        (r["id"], r["label"], round(r["score"], 6)) for r in expected
    ]
    assert all(0.5 <= row["score"] <= 1 for row in labels)  # the best of two labels: at least an even chance


def test_classify_takes_the_whole_selection_and_refuses_a_relative_glob(client, media):
    """The form's fields are ``ClassifyOptions``' own: a path glob and the order, as the CLI takes them."""
    asked = {"labels": "red,sound", "target": "image", "path": "*/red.*", "sort": "score"}
    labels = client.post("/api/classify", data=asked).json()
    assert [Path(row["uri"]).name for row in labels] == ["red.jpg"]
    relative = client.post("/api/classify", data={**asked, "path": "served/*"})
    assert relative.status_code == 400 and "absolute glob" in relative.json()["detail"]
    unordered = client.post("/api/classify", data={**asked, "sort": "confidence"})
    assert unordered.status_code == 400 and "id or score" in unordered.json()["detail"]


TOKEN = "a-token-of-some-length"


def test_token_is_required_when_configured(media):
    guarded = TestClient(create_app(media[2], token=TOKEN))
    assert guarded.get("/api/info").status_code == 401
    assert guarded.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert guarded.get(f"/api/info?token={TOKEN}").status_code == 401  # never in a URL: logs and history keep them
    assert guarded.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/api/info", headers={"Authorization": "Bearer café".encode()}).status_code == 401  # not 500
    assert guarded.get("/").status_code == 200  # the page itself holds no data; it asks for the token
    assert guarded.get("/docs").status_code == 401 and guarded.get("/openapi.json").status_code == 401
    session = guarded.post("/api/session", headers={"Authorization": f"Bearer {TOKEN}"})
    assert session.status_code == 204 and "httponly" in session.headers["set-cookie"].lower()
    assert guarded.get("/openapi.json").json()["info"]["title"] == "xsearch"  # the cookie stands for the token
    assert guarded.get("/api/info").status_code == 200


def test_previews_and_media_are_signed_for_a_while_and_never_carry_the_token(media):
    _, _, collection = media
    red = ids(collection)["red"]
    guarded = TestClient(create_app(collection, token=TOKEN))
    body = guarded.post(
        "/api/search", data={"item": [str(red)], "k": "1"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    hit = body.json()["results"][0]
    assert TOKEN not in hit["thumbnail_url"] and "signature=" in hit["media_url"]
    assert guarded.get(hit["thumbnail_url"]).content[:3] == b"\xff\xd8\xff"
    assert guarded.get(hit["media_url"]).status_code == 200
    assert guarded.get(f"/api/items/{red}/media").status_code == 401  # unsigned: the token is needed
    other = hit["media_url"].replace(f"/items/{red}/", f"/items/{red + 1}/")
    assert guarded.get(other).status_code == 401  # a signature is for one item
    stale = hit["media_url"].split("?")[0] + "?expires=1&signature=" + hit["media_url"].split("signature=")[1]
    assert guarded.get(stale).status_code == 401


def test_a_short_token_is_refused(media):
    with pytest.raises(UsageError, match="easy to guess"):
        create_app(media[2], token="abc")


def test_concurrent_searches_and_rows_committed_meanwhile(client, media):
    _, _, collection = media
    known = ids(collection)

    def query(item):
        return client.post("/api/search", data={"item": [str(known[item])], "target": "image", "k": "1"}).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(query, ["red", "blue"] * 16))
    assert all(a["results"][0]["id"] == known[name] for a, name in zip(answers, ["red", "blue"] * 16))
    vector = np.asarray(collection.store.items().lookup(known["red"], ["embedding"])["embedding"], np.float32)
    collection.store.add_items([ItemRecord("/elsewhere/copy.jpg", Modality.IMAGE, vector)])  # as `xsearch index` would
    body = client.post("/api/search", data={"item": [str(known["red"])], "target": "image", "k": "2"}).json()
    assert "/elsewhere/copy.jpg" in [hit["uri"] for hit in body["results"]]


def test_serve_refuses_an_open_address_without_a_token(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--db", str(tmp_path / "db"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--token" in result.output and "--no-auth" in result.output


# ---- the page in a real browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(media):
    with running(create_app(media[2])) as url:
        yield url


def test_page_in_chromium(server, media, tmp_path):
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    root, files, _ = media
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(server + "/")
        page.wait_for_selector(".target")  # the modalities of the database, from /api/info
        page.set_input_files("#picker", str(files["red"]))  # picked
        sound = files["tone"].read_bytes()
        page.evaluate(  # dropped: a synthetic DataTransfer, as a drag from the desktop delivers
            """bytes => { const data = new DataTransfer();
                data.items.add(new File([new Uint8Array(bytes)], "dropped.wav", {type: "audio/wav"}));
                document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data})); }""",
            list(sound),
        )
        assert page.locator(".input").count() == 2
        page.locator(".input .weight").nth(1).fill("0.5")  # the sound counts half
        page.fill("#text", "a red picture")
        page.click("#add-text")
        page.click("#search")
        page.wait_for_selector("#results .card")
        assert "results" in page.inner_text("#status")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert page.locator("#results img").count() >= 3
        assert page.locator("#results audio").count() == 1 and page.locator("#results video").count() == 1
        first = page.locator("#results .card").first.get_attribute("data-id")
        page.locator("#results .card .more").first.click()  # "more like this": the hit joins the query
        page.wait_for_function("() => document.querySelectorAll('.input').length === 4")
        page.wait_for_selector("#results .card")
        assert page.locator(".input .name").last.inner_text().startswith("item: ")
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        page.fill("#where", "nope > 1")  # an error: no results of the earlier query stay under it
        page.click("#search")
        page.wait_for_selector("#status.error")
        assert "no column named nope" in page.inner_text("#status") and page.locator("#results .card").count() == 0
        assert "-0.0" not in page.inner_text("body")
        browser.close()
    assert first is not None and (tmp_path / "serve.png").stat().st_size > 10_000


def test_one_error_shape_and_forms_only(client):
    invalid = client.post("/api/search", data={"item": ["0"], "k": "0"})
    assert invalid.status_code == 422 and isinstance(invalid.json()["detail"], str) and "k:" in invalid.json()["detail"]
    as_json = client.post("/api/search", json={"text": ["a dog"]})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]


def test_the_query_echo_names_uploads_as_the_client_did(client, media):
    _, files, _ = media
    with open(files["red"], "rb") as photo:
        body = client.post("/api/search", files=[("files", ("my photo.jpg", photo, "image/jpeg"))], data={"k": "1"})
    assert body.json()["query"][0]["value"] == "my photo.jpg"


def test_docs_page_needs_no_cdn(client):
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower() and "https://" not in page
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "xsearch"


def test_text_hits_carry_an_excerpt(tmp_path, tiny_model):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("\ufeffthe first lines of a note", encoding="utf-8")
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    collection.index([notes], workers=0)
    hit = TestClient(create_app(collection)).post("/api/search", data={"text": ["a note"]}).json()["results"][0]
    assert hit["excerpt"] == "the first lines of a note"


def test_a_text_swapped_for_a_link_shows_no_excerpt_even_with_its_size_and_time(tmp_path, tiny_model):
    """A link put in an indexed note's place must not show the server user's files: not in the page's
    results, not in a contact sheet, even when the target has the note's size and mtime."""
    import os

    from xsearch.contact_sheet import render

    notes = tmp_path / "notes"
    notes.mkdir()
    note = notes / "a.txt"
    note.write_text("an ordinary note")
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY DATA")  # as long as the note
    os.utime(secret, ns=(note.stat().st_atime_ns, note.stat().st_mtime_ns))
    collection = Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32"))
    collection.index([notes], workers=0)
    client = TestClient(create_app(collection))
    assert client.post("/api/search", data={"text": ["note"]}).json()["results"][0]["excerpt"] == "an ordinary note"
    note.unlink()
    note.symlink_to(secret)
    assert (note.stat().st_size, note.stat().st_mtime) == (secret.stat().st_size, secret.stat().st_mtime)
    hit = client.post("/api/search", data={"text": ["note"]}).json()["results"][0]
    assert hit["uri"] == str(note) and hit["excerpt"] == ""
    results = collection.search("note")
    assert "PRIVATE" not in render(results) and "ordinary" not in render(results)


def test_odd_item_names_times_and_signatures_are_client_errors(media):
    """Inputs that used to reach a 500 (or exit 70): superscript digits, a time of 400 nines, an id of 5,000
    digits, a signature that is not ASCII."""
    _, _, collection = media
    red = ids(collection)["red"]
    client = TestClient(create_app(collection))
    for item in ["1@²", "1@" + "9" * 400, "9" * 5000]:
        answer = client.post("/api/search", data={"item": [item], "k": "1"})
        assert 400 <= answer.status_code < 500, (item[:10], answer.status_code, answer.text[:200])
    assert client.get("/api/items/" + "7" * 5000).status_code == 404
    guarded = TestClient(create_app(collection, token=TOKEN))
    odd = guarded.get(f"/api/items/{red}/media?expires={int(time.time()) + 60}&signature=caf%C3%A9")
    assert odd.status_code == 401
    for item in ["1@²", "1@" + "9" * 400]:
        result = CliRunner().invoke(cli, ["search", "--db", str(collection.path), "--item", item])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output[-300:]


def test_a_null_origin_is_cross_origin_and_searches_are_bounded_in_inputs(media):
    """``Origin: null`` (a sandboxed frame, a ``file:`` page) is refused like any other page's origin, token or
    not; one search takes at most ``MAX_INPUTS`` inputs."""
    from xsearch.server.security import MAX_INPUTS

    _, _, collection = media
    for app in (create_app(collection), create_app(collection, token=TOKEN)):
        client = TestClient(app)
        headers = {"Origin": "null", "Authorization": f"Bearer {TOKEN}"}
        assert client.post("/api/search", data={"text": ["a"]}, headers=headers).status_code == 403
        foreign = {"Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"}
        assert client.post("/api/search", data={"text": ["a"]}, headers=foreign).status_code == 403
        same = {"Origin": "http://testserver", "Authorization": f"Bearer {TOKEN}"}
        assert client.post("/api/search", data={"text": ["a"]}, headers=same).status_code == 200
    many = TestClient(create_app(collection)).post("/api/search", data={"text": ["a"] * (MAX_INPUTS + 1)})
    assert many.status_code == 422 and f"at most {MAX_INPUTS} inputs" in many.json()["detail"]


def test_a_session_expires_and_can_be_revoked(media, monkeypatch):
    from xsearch.server import security as server_app

    _, _, collection = media
    client = TestClient(create_app(collection, token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answer = client.post("/api/session", headers=bearer)
    assert answer.status_code == 204 and f"max-age={server_app.SESSION_SECONDS}" in answer.headers["set-cookie"].lower()
    old = client.cookies.get("xsearch_session")
    client.cookies.clear()
    session = {"xsearch_session": old}
    assert client.get("/api/info", cookies=session).status_code == 200
    now = time.time()
    monkeypatch.setattr(server_app.time, "time", lambda: now + server_app.SESSION_SECONDS + 1)
    assert client.get("/api/info", cookies=session).status_code == 401  # expired
    monkeypatch.setattr(server_app.time, "time", lambda: now)
    assert client.get("/api/info", cookies=session).status_code == 200
    assert client.delete("/api/session", headers=bearer).status_code == 204
    assert client.get("/api/info", cookies=session).status_code == 401  # revoked
    client.post("/api/session", headers=bearer)
    fresh = client.cookies.get("xsearch_session")
    client.cookies.clear()
    assert client.get("/api/info", cookies={"xsearch_session": fresh}).status_code == 200
    forged = fresh.split(".")[0] + "." + "0" * 64
    assert client.get("/api/info", cookies={"xsearch_session": forged}).status_code == 401


def test_the_page_searches_with_text_typed_then_search_clicked(server):
    """What every newcomer does: type a text, click Search (not "Add text", not Enter)."""
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(server + "/")
        page.wait_for_selector(".target")
        page.fill("#text", "a red picture")
        page.click("#search")
        page.wait_for_selector("#results .card")
        assert page.locator(".input .name").first.inner_text().endswith("a red picture")
        assert page.input_value("#text") == ""
        browser.close()


def test_the_address_printed_is_one_a_browser_can_open():
    """``--host 0.0.0.0`` listens on every address; the line to open names this machine, not 0.0.0.0."""
    import socket

    from xsearch.cli.serve import _reachable

    assert _reachable("0.0.0.0") == _reachable("::") == socket.gethostname()
    assert _reachable("127.0.0.1") == "127.0.0.1" and _reachable("::1") == "[::1]"


def test_the_token_page_says_a_token_was_refused_and_takes_a_pasted_link(media):
    """A wrong token gets a line saying so; a ``#token=`` link pasted into the open tab is taken at once. The
    page asks for no favicon the server lacks, and a negative weight keeps its row."""
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    token = "a-token-long-enough-to-pass"
    with running(create_app(media[2], token=token)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        missing = []
        page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
        page.goto(url + "/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "not-the-token-at-all")
        page.click("#login button")
        page.wait_for_function("() => document.getElementById('login-problem').textContent !== ''")
        assert "refused" in page.inner_text("#login-problem")
        page.evaluate(f"() => {{ location.hash = 'token={token}'; }}")  # pasted into the same tab
        page.wait_for_selector(".target")
        assert page.locator("#login").is_hidden() and "token" not in page.url
        page.fill("#text", "a red picture")
        page.click("#add-text")
        page.locator(".input .weight").first.fill("-0.5")
        tops = page.evaluate(
            "() => [...document.querySelectorAll('.input .weight-row > *')].map(e => e.getBoundingClientRect().top)"
        )
        assert len(tops) == 3 and max(tops) - min(tops) < 12, tops  # slider, "-0.5" and remove on one line
        assert page.inner_text(".input output") == "-0.5"
        browser.close()
    assert missing == [], missing


def test_the_readme_names_every_field_of_a_search(client):
    """README's list of ``POST /api/search`` fields, checked against the form the server takes."""
    schema = client.app.openapi()
    body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    form = next(iter(body.values()))["schema"]
    if "$ref" in form:
        form = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    described = readme.split("`POST /api/search`", 1)[1].split("`GET /api/items/{id}`", 1)[0]
    assert set(form["properties"]) >= {"files", "moments", "per_file"}
    assert [name for name in form["properties"] if f"`{name}`" not in described] == []


def test_a_search_holds_the_model_for_one_input_at_a_time(client, media):
    """300 images in one request held the model for 171 s. A search takes at most 16 inputs, and the model's
    lock is taken for each input's encoding and let go between them, so another request's input gets the
    model after at most one input of this one."""
    import threading

    _, files, collection = media
    encoder = collection.encoder
    held: list[float] = []

    class Timed:
        def __init__(self, lock):
            self.lock, self.depth, self.since = lock, 0, 0.0

        def __enter__(self):
            self.lock.acquire()
            self.depth += 1
            if self.depth == 1:
                self.since = time.perf_counter()

        def __exit__(self, *exc):
            self.depth -= 1
            if self.depth == 0:
                held.append(time.perf_counter() - self.since)
            self.lock.release()

    real = encoder._lock
    encoder._lock = Timed(threading.RLock())
    try:
        with open(files["red"], "rb") as a, open(files["blue"], "rb") as b, open(files["tone"], "rb") as c:
            upload = [("files", ("a.jpg", a, "image/jpeg")), ("files", ("b.png", b, "image/png"))]
            upload.append(("files", ("c.wav", c, "audio/wav")))
            response = client.post("/api/search", files=upload, data={"text": ["a red door"], "k": "1"})
    finally:
        encoder._lock = real
    assert response.status_code == 200, response.text
    assert len(held) == 4  # one hold per input (three files, one text), none for the whole request
    too_many = client.post("/api/search", data={"text": [f"t{i}" for i in range(17)]})
    assert too_many.status_code == 422 and "at most 16 inputs" in too_many.json()["detail"]
