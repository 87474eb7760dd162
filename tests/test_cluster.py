"""``xsearch index --ray`` on a local multi-node Ray cluster: the same rows and errors as a local run."""

from __future__ import annotations

import numpy as np
import pytest

from xsearch import Collection
from xsearch.encoder import Encoder
from xsearch.testing.media import gradient_image

from corpus import bad_corpus, good_corpus
from scripts import xsearch_script

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install -e '.[ray]')")

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs and two 1-CPU worker nodes: every decode task and actor runs on a worker."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _rows(collection: Collection) -> dict[str, tuple]:
    table = collection.store.items().scan(["uri", "modality", "sha256", "embedding"]).to_pylist()
    return {r["uri"]: (r["modality"], r["sha256"], np.asarray(r["embedding"])) for r in table}


def _errors(collection: Collection) -> dict[str, tuple]:
    return {r["uri"]: (r["stage"], r["message"]) for r in collection.errors().to_pylist()}


def test_a_cluster_run_equals_a_local_run(cluster, tmp_path, tiny_model):
    root = tmp_path / "media"
    root.mkdir()
    good_corpus(root / "good")
    bad_corpus(root / "bad")
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    local = Collection.open(tmp_path / "local", encoder=encoder)
    local_report = local.index([root], workers=0)
    remote = Collection.open(tmp_path / "remote", encoder=encoder)
    report = remote.index([root], ray="auto", batch_size=4)

    assert len(report.nodes) == 2  # the encoder actors ran on both worker nodes
    assert (report.indexed, report.failed) == (local_report.indexed, local_report.failed)
    assert report.indexed > 10 and report.failed > 5
    want, got = _rows(local), _rows(remote)
    assert sorted(got) == sorted(want)
    for uri, (modality, sha256, vector) in want.items():
        assert got[uri][:2] == (modality, sha256)
        np.testing.assert_allclose(got[uri][2], vector, atol=1e-6)
    assert _errors(remote) == _errors(local)
    assert remote.info()["indices"] == local.info()["indices"]

    again = remote.index([root], ray="auto")
    assert (again.indexed, again.updated) == (0, 0) and _rows(remote).keys() == want.keys()


def test_a_killed_cluster_driver_resumes_to_one_row_per_file(cluster, tmp_path, tiny_model):
    """The driver is SIGKILLed after its first commit; the re-run ends with exactly one row per file."""
    import signal
    import subprocess
    import time

    from xsearch.model import save_checkpoint

    root = tmp_path / "media"
    root.mkdir()
    files = good_corpus(root)
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
    db = tmp_path / "db"
    xsearch = xsearch_script()
    argv = [xsearch, "index", str(root), "--db", str(db), "--checkpoint", str(checkpoint), "--quiet"]
    argv += ["--ray", cluster.address, "--commit-every", "2", "--batch-size", "2"]
    manifests = db / "items.lance" / "_versions"
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and len(list(manifests.glob("*.manifest"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed  # mid-run, after at least one commit
    final = subprocess.run(argv, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    collection = Collection.open(db, checkpoint=checkpoint)
    uris = collection.store.items().scan(["uri", "id"]).to_pylist()
    assert sorted(r["uri"] for r in uris) == sorted(str(p.resolve()) for p in files)  # no file twice or missing
    assert len({r["id"] for r in uris}) == len(files)


def test_a_cluster_indexes_s3_media_into_an_s3_database_as_a_local_run(cluster, s3, tmp_path, tiny_model):
    """The nodes were started before the bucket's settings existed: they reach it with the driver's."""
    root = tmp_path / "media"
    root.mkdir()
    good_corpus(root)
    bucket = s3.bucket()
    s3.upload(root, bucket, "media")
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    local = Collection.open(tmp_path / "local", encoder=encoder)
    local.index([root], workers=0)
    remote = Collection.open(f"s3://{bucket}/db", encoder=encoder)
    report = remote.index([f"s3://{bucket}/media"], ray="auto", batch_size=4)

    assert len(report.nodes) == 2 and report.failed == 0
    want = {uri.removeprefix(str(root)): row for uri, row in _rows(local).items()}
    got = {uri.removeprefix(f"s3://{bucket}/media"): row for uri, row in _rows(remote).items()}
    assert sorted(got) == sorted(want)
    for key, (modality, sha256, vector) in want.items():
        assert got[key][:2] == (modality, sha256)
        np.testing.assert_allclose(got[key][2], vector, atol=1e-6)
    assert remote.info()["indices"] == local.info()["indices"]


def test_a_cluster_that_loses_a_node_mid_run_ends_as_a_local_run(cluster, tmp_path, tiny_model):
    """A third worker node is removed, ungracefully, once files have come back: the run goes on with the
    nodes left (a pool that may shrink), or stops with one line after committing what was embedded and a
    re-run finishes; either way the database ends as a local run's: one row per file, the same errors."""
    import threading
    import time

    from xsearch.indexer.pipeline import RunStalled

    root = tmp_path / "media"
    root.mkdir()
    good_corpus(root / "good")
    bad_corpus(root / "bad")
    (root / "more").mkdir()
    for i in range(24):
        gradient_image(root / "more" / f"{i:02d}.png", seed=100 + i)
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    local = Collection.open(tmp_path / "local", encoder=encoder)
    local.index([root], workers=0)
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    remote = Collection.open(tmp_path / "remote", encoder=encoder)
    removed = threading.Event()

    def remove_after_first_commits() -> None:
        deadline = time.monotonic() + 120
        versions = tmp_path / "remote" / "items.lance" / "_versions"
        while time.monotonic() < deadline and len(list(versions.glob("*.manifest"))) < 3:
            time.sleep(0.05)
        cluster.remove_node(doomed, allow_graceful=False)
        removed.set()

    remover = threading.Thread(target=remove_after_first_commits, daemon=True)
    remover.start()
    options = {"ray": "auto", "batch_size": 2, "commit_every": 2, "ray_stall_seconds": 60}
    try:
        report = remote.index([root], **options)
        finished_first_time = not report.interrupted
    except RunStalled:
        finished_first_time = False
    remover.join(timeout=150)
    assert removed.is_set()
    if not finished_first_time:
        remote.index([root], **options)
    assert sorted(_rows(remote)) == sorted(_rows(local))
    table = remote.store.items().scan(["id"]).to_pylist()
    assert len({r["id"] for r in table}) == len(table) == len(_rows(local))
    assert _errors(remote) == _errors(local)
