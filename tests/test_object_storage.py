"""Databases and media in an S3 bucket, against a real S3 implementation: moto's server on 127.0.0.1 (the
test extra), reached through the standard AWS environment only.

An S3 run must equal a local run of the same files; re-runs change nothing; a second writer is refused and a
lapsed lease taken over; a server that ignores conditional writes is refused before anything is written; a
killed run loses nothing; ``serve`` streams objects with Range support.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import logging
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from xsearch import Collection, Query
from xsearch.cli.main import app
from xsearch.encoder import Encoder
from xsearch.errors import StoreError
from xsearch.model import save_checkpoint
from xsearch.objects import OPTIONS_ENV, bucket_store
from xsearch.server.app import create_app
from xsearch.store import writer_lock
from xsearch.testing.media import gradient_image, tone, write_wav

from corpus import good_corpus
from scripts import xsearch_script

runner = CliRunner()


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(tiny_model, device="cpu", precision="fp32")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))  # index copies and caches of this test only


def rows_by_key(collection: Collection, root: str) -> dict[str, dict]:
    table = collection.store.items().scan(["uri", "modality", "sha256", "embedding"]).to_pylist()
    return {row["uri"].removeprefix(root): row for row in table}


def test_index_an_s3_bucket_into_an_s3_database_as_a_local_run_would(s3, tmp_path, encoder):
    media = tmp_path / "media"
    media.mkdir()
    good_corpus(media)
    bucket = s3.bucket()
    s3.upload(media, bucket, "media")
    local = Collection.open(tmp_path / "local.db", encoder=encoder)
    remote = Collection.open(f"s3://{bucket}/db", encoder=encoder)
    local_report = local.index([media], workers=0)
    remote_report = remote.index([f"s3://{bucket}/media"], workers=0)

    assert remote_report.indexed == local_report.indexed > 10
    assert remote_report.failed == local_report.failed
    here, there = rows_by_key(local, str(media)), rows_by_key(remote, f"s3://{bucket}/media")
    assert sorted(here) == sorted(there)
    for key, row in here.items():
        assert there[key]["modality"] == row["modality"] and there[key]["sha256"] == row["sha256"], key
        np.testing.assert_allclose(there[key]["embedding"], row["embedding"], atol=1e-6)
    local_info, remote_info = local.info(), remote.info()
    assert remote_info["by_modality"] == local_info["by_modality"]
    assert all(facts["fresh"] for facts in remote_info["indices"].values())
    assert remote_info["db"] == f"s3://{bucket}/db" and remote_info["bytes"] > 0
    # The indices live in the bucket (pointer + content-addressed objects), not only in this machine's copy.
    keys = s3.keys(bucket, "db/")
    assert f"db/faiss/{'image'}.json" in keys and any(k.startswith("db/index-objects/") for k in keys)

    # Searching from another machine: nothing local but the bucket (a fresh $XSEARCH_HOME).
    os.environ["XSEARCH_HOME"] = str(tmp_path / "other-machine")
    fresh = Collection.open(f"s3://{bucket}/db", encoder=encoder)
    query = Query.image(f"s3://{bucket}/media/photos/img2.jpg")
    near = [hit.uri.removeprefix(f"s3://{bucket}/media") for hit in fresh.search(query, target="image", k=3)]
    ours = [
        hit.uri.removeprefix(str(media))
        for hit in local.search(Query.image(media / "photos/img2.jpg"), target="image", k=3)
    ]
    assert near == ours and near[0] == "/photos/img2.jpg"
    copies = tmp_path / "other-machine" / "objects" / "s3" / bucket / "db"
    assert any((copies / "tables" / "items.lance" / "data").iterdir())  # rows are read from a local copy
    assert (copies / "faiss" / "image" / "meta.json").is_file()  # and the index from its verified copy

    again = remote.index([f"s3://{bucket}/media"], workers=0)
    assert (again.indexed, again.updated, again.unchanged) == (0, 0, remote_report.indexed)
    gradient_image(tmp_path / "changed.jpg", seed=99)  # one object replaced: exactly one re-embedded
    s3.client.upload_file(str(tmp_path / "changed.jpg"), bucket, "media/photos/img3.jpg")
    touched = remote.index([f"s3://{bucket}/media"], workers=0)
    assert (touched.indexed, touched.updated) == (0, 1)
    assert len(rows_by_key(remote, "")) == remote_report.indexed  # one row per object, still
    time.sleep(1.1)  # a reader checks the bucket for commits once a second: then it reads the new version
    fresh.search(query, target="image", k=1)
    assert fresh.engine.snapshot().pinned.items.version == remote.store.items().version


def test_a_second_writer_is_refused_naming_the_holder_and_a_lapsed_lease_is_taken_over(s3, caplog):
    bucket = s3.bucket()
    uri = f"s3://{bucket}/db"
    with writer_lock(uri):
        with pytest.raises(
            StoreError, match=rf"{uri}: another xsearch is writing this database \(pid {os.getpid()} on"
        ):
            with writer_lock(uri):
                pass
    assert "db/writer.lock" not in s3.keys(bucket, "db/")  # released

    lapsed = {"holder": "pid 4242 on lost-node, since 2026-01-01 00:00:00 UTC", "expires": time.time() - 5}
    s3.client.put_object(Bucket=bucket, Key="db/writer.lock", Body=json.dumps(lapsed).encode())
    with caplog.at_level(logging.WARNING), writer_lock(uri):
        note = json.loads(s3.client.get_object(Bucket=bucket, Key="db/writer.lock")["Body"].read())
        assert note["holder"].startswith(f"pid {os.getpid()} on") and note["expires"] > time.time()
    assert "took over the writer lease of pid 4242 on lost-node" in caplog.text


class _DroppingProxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to moto without its ``If-None-Match`` header: a server that ignores
    conditional writes, as some S3-compatible services do."""

    upstream = ""

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("if-none-match", "host")}
        connection = http.client.HTTPConnection(self.upstream)
        connection.request(self.command, self.path, body=body, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def dropping_proxy(endpoint: str):
    handler = type("Proxy", (_DroppingProxy,), {"upstream": endpoint.removeprefix("http://")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_server_that_ignores_conditional_writes_is_refused_before_anything_is_written(
    s3, tmp_path, tiny_model, monkeypatch
):
    bucket = s3.bucket()
    write_wav(tmp_path / "tone.wav", tone(1.0, 16000), 16000)
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    monkeypatch.setenv(OPTIONS_ENV, "{}")  # --storage-option below sets it for this process: restored after
    with dropping_proxy(s3.endpoint) as proxy:
        result = runner.invoke(
            app,
            ["index", str(tmp_path / "tone.wav"), "--db", f"s3://{bucket}/db", "--checkpoint", str(checkpoint),
             "--model", "tiny_test", "--workers", "0", "--storage-option", f"aws_endpoint={proxy}"],
        )  # fmt: skip
    bucket_store.cache_clear()
    assert result.exit_code == 2, result.output
    assert "ignores conditional writes" in result.output and "refusing to write" in result.output
    assert "Traceback" not in result.output
    assert s3.keys(bucket, "") == []  # nothing written, the probe removed

    # The same run straight to moto, which honours them, works; its checkpoint is an object too, copied
    # into this machine's cache and checked.
    monkeypatch.setenv(OPTIONS_ENV, "{}")
    s3.client.upload_file(str(checkpoint), bucket, "models/tiny.pt")
    ok = runner.invoke(
        app,
        ["index", str(tmp_path / "tone.wav"), "--db", f"s3://{bucket}/db", "--checkpoint", f"s3://{bucket}/models/tiny.pt",
         "--model", "tiny_test", "--workers", "0", "--precision", "fp32"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    copy = tmp_path / "home" / "checkpoints" / "objects" / "s3" / bucket / "models" / "tiny.pt"
    assert copy.read_bytes() == checkpoint.read_bytes()
    assert copy.with_name("tiny.pt.sha256").read_text().strip() == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert Collection.open(f"s3://{bucket}/db").info()["items"] == 1


def test_serve_streams_an_objects_bytes_with_ranges(s3, tmp_path, encoder):
    bucket = s3.bucket()
    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "tone.wav", tone(2.0, 16000), 16000)
    gradient_image(media / "red.jpg", seed=1)
    s3.upload(media, bucket, "media")
    collection = Collection.open(f"s3://{bucket}/db", encoder=encoder)
    collection.index([f"s3://{bucket}/media"], workers=0)
    client = TestClient(create_app(collection))
    body = client.post("/api/search", data={"text": "a tone", "target": "audio", "k": "1"}).json()
    hit = body["results"][0]
    assert hit["uri"] == f"s3://{bucket}/media/tone.wav"
    whole = client.get(hit["media_url"])
    assert whole.status_code == 200 and whole.content == (media / "tone.wav").read_bytes()
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(hit["media_url"], headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == (media / "tone.wav").read_bytes()[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{(media / 'tone.wav').stat().st_size}"
    assert client.get(hit["media_url"], headers={"Range": "bytes=999999-"}).status_code == 416
    s3.client.put_object(Bucket=bucket, Key="media/tone.wav", Body=b"replaced")  # not the file indexed
    assert client.get(hit["media_url"]).status_code == 404


@pytest.mark.slow
def test_a_run_killed_after_commits_loses_nothing(s3, tmp_path, tiny_model):
    bucket = s3.bucket()
    media = tmp_path / "media"
    media.mkdir()
    for i in range(40):
        gradient_image(media / f"p{i:02d}.png", seed=i)
    s3.upload(media, bucket, "media")
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    command = [xsearch_script(), "index", f"s3://{bucket}/media", "--db", f"s3://{bucket}/db",
               "--checkpoint", str(checkpoint), "--model", "tiny_test", "--precision", "fp32",
               "--workers", "1", "--commit-every", "4"]  # fmt: skip
    env = {**os.environ, "XSEARCH_HOME": str(tmp_path / "home"), "XSEARCH_WRITER_LEASE_SECONDS": "20"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        manifests = [k for k in s3.keys(bucket, "db/items.lance/_versions/") if k.endswith(".manifest")]
        if len(manifests) >= 3:  # created, then two batches committed
            break
        time.sleep(0.2)
    assert run.poll() is None, "the run ended before it could be killed: " + run.stderr.read().decode()[-500:]
    run.send_signal(signal.SIGKILL)
    run.wait()
    refused = subprocess.run(command, env=env, capture_output=True, text=True)  # its lease has not lapsed yet
    assert refused.returncode == 2 and "another xsearch is writing this database" in refused.stderr
    lease = json.loads(s3.client.get_object(Bucket=bucket, Key="db/writer.lock")["Body"].read())
    time.sleep(max(lease["expires"] - time.time(), 0) + 0.5)  # then it lapses, and the next run takes it over
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    collection = Collection.open(f"s3://{bucket}/db")
    table = collection.store.items().scan(["id", "uri"]).to_pylist()
    assert sorted(r["uri"] for r in table) == [f"s3://{bucket}/media/p{i:02d}.png" for i in range(40)]
    assert len({r["id"] for r in table}) == 40
    assert all(facts["fresh"] for facts in collection.info()["indices"].values())
    assert s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "db/writer.lock" not in s3.keys(bucket, "db/")
