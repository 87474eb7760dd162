"""Checkpoint loading: strict, with one-line errors naming the file; verified downloads."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import torch

from xsearch.errors import CheckpointError
from xsearch.model import create_model, load_checkpoint, load_pretrained, save_checkpoint
from xsearch.model.checkpoint import download, resolve_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(4)
    model = create_model("tiny_test")
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    return model, path


def test_roundtrip_is_exact(tiny_checkpoint):
    model, path = tiny_checkpoint
    loaded = load_checkpoint(path, "tiny_test")
    x = torch.randn(1, 3, 1, 128, 204)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed("audio", x), model.embed("audio", x), rtol=0, atol=0)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "nope.pth", "tiny_test")
    assert "nope.pth" in _one_line(exc) and "not found" in str(exc.value)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pth", "tiny_test")


def test_truncated_file(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint[1].read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "cut.pth", "tiny_test")
    assert "cut.pth" in _one_line(exc) and "truncated or corrupt" in str(exc.value)


def test_random_bytes(tmp_path):
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "noise.pth", "tiny_test")
    message = _one_line(exc)  # the file, and why: bytes that are no checkpoint at all
    assert "noise.pth: not a readable PyTorch checkpoint" in message and "not a PyTorch zip archive" in message


def test_not_imagebind(tmp_path):
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "linear.pth", "tiny_test")
    assert "not an ImageBind checkpoint" in _one_line(exc)


def test_checkpoint_of_another_size(tiny_checkpoint):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tiny_checkpoint[1], "imagebind_huge")
    assert "does not match ImageBind 'imagebind_huge'" in _one_line(exc) and "keys missing" in str(exc.value)


def test_wrong_shape(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint[1], weights_only=True)
    state["modality_preprocessors.imu.pos_embed"] = torch.zeros(1, 100, 32)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "reshaped.pth", "tiny_test")
    assert "wrong shape for 'modality_preprocessors.imu.pos_embed': (1, 100, 32)" in _one_line(exc)


def test_missing_keys(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint[1], weights_only=True)
    del state["modality_heads.imu.3.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"1 keys missing .*modality_heads\.imu\.3\.weight"):
        load_checkpoint(tmp_path / "partial.pth", "tiny_test")


def test_env_var_and_explicit_path(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("XSEARCH_CHECKPOINT", str(tiny_checkpoint[1]))
    assert resolve_checkpoint() == tiny_checkpoint[1]
    assert load_pretrained(architecture="tiny_test").cfg.name == "tiny_test"
    monkeypatch.setenv("XSEARCH_CHECKPOINT", str(tmp_path / "gone.pth"))
    with pytest.raises(CheckpointError, match="gone.pth: checkpoint file not found"):
        resolve_checkpoint()


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path``."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_sha256(tiny_checkpoint, http_server, tmp_path_factory):
    root, url = http_server
    data = tiny_checkpoint[1].read_bytes()
    (root / "tiny.pth").write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    dest = tmp_path_factory.mktemp("cache") / "tiny.pth"
    assert download(f"{url}/tiny.pth", dest, good, progress=False) == dest
    assert dest.read_bytes() == data
    assert dest.with_name("tiny.pth.sha256").read_text().strip() == good
    assert load_checkpoint(dest, "tiny_test").cfg.name == "tiny_test"

    bad = tmp_path_factory.mktemp("cache2") / "tiny.pth"
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        download(f"{url}/tiny.pth", bad, "0" * 64, progress=False)
    assert not bad.exists() and not bad.with_name("tiny.pth.part").exists()


def test_download_failure_is_clear(http_server, tmp_path):
    _, url = http_server
    with pytest.raises(CheckpointError, match="download failed"):
        download(f"{url}/missing.pth", tmp_path / "x.pth", progress=False)


def test_cache_download_on_first_use(tiny_checkpoint, http_server, monkeypatch, tmp_path, caplog):
    """No checkpoint given: download into $XSEARCH_HOME/checkpoints, stating the licence; a damaged
    cached file is detected against the recorded sha256."""
    root, url = http_server
    (root / "weights.pth").write_bytes(tiny_checkpoint[1].read_bytes())
    home = tmp_path / "home"
    monkeypatch.setenv("XSEARCH_HOME", str(home))
    monkeypatch.delenv("XSEARCH_CHECKPOINT", raising=False)
    with caplog.at_level("WARNING"):
        path = resolve_checkpoint(url=f"{url}/weights.pth")
    assert path == home / "checkpoints" / "imagebind_huge.pth" and path.is_file()
    assert "CC-BY-NC 4.0" in caplog.text
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        resolve_checkpoint()


def test_cached_checkpoint_is_hashed_once_and_on_demand(tiny_checkpoint, http_server, monkeypatch, tmp_path):
    """The hash is recorded with size, mtime and inode: a load re-hashes only when they changed, or when
    asked (``verify``), which still catches a byte flipped behind the file's back."""
    import os

    from xsearch.model import checkpoint as module

    root, url = http_server
    (root / "weights.pth").write_bytes(tiny_checkpoint[1].read_bytes())
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XSEARCH_CHECKPOINT", raising=False)
    path = resolve_checkpoint(url=f"{url}/weights.pth")
    hashed = []
    monkeypatch.setattr(
        module, "sha256_file", lambda p: hashed.append(p) or module.hashlib.sha256(p.read_bytes()).hexdigest()
    )
    resolve_checkpoint()
    resolve_checkpoint()
    assert len(hashed) == 1  # the first load after the download hashes; the next trusts the record

    info = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # same size, same mtime, same inode
    assert resolve_checkpoint() == path and len(hashed) == 1  # not noticed without asking...
    with pytest.raises(CheckpointError, match="sha256 differs"):
        resolve_checkpoint(verify=True)  # ...caught when asked
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        resolve_checkpoint()  # a changed mtime re-hashes on its own


@pytest.fixture
def short_server():
    """Serves 1000 bytes while announcing 5000, as a connection cut mid-transfer looks to the client."""

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_download_cut_short_is_not_installed(short_server, tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(CheckpointError, match=r"(cut short \(1,000 of 5,000 bytes\)|download failed)"):
        download(f"{short_server}/w.pth", dest, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth.lock"]  # no file, no recorded hash


def test_a_download_that_does_not_load_is_not_recorded(http_server, monkeypatch, tmp_path):
    root, url = http_server
    (root / "weights.pth").write_bytes(b"<html>a login page, not weights</html>")
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XSEARCH_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        resolve_checkpoint(url=f"{url}/weights.pth")
    cache = tmp_path / "home" / "checkpoints"
    assert not (cache / "imagebind_huge.pth").exists() and not (cache / "imagebind_huge.pth.sha256").exists()


def test_a_planted_part_link_is_not_followed_and_downloads_do_not_collide(tiny_checkpoint, http_server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    root, url = http_server
    (root / "tiny.pth").write_bytes(tiny_checkpoint[1].read_bytes())
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (cache / "tiny.pth.part").symlink_to(victim)  # the old fixed temporary name, planted as a link
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: download(f"{url}/tiny.pth", cache / "tiny.pth", progress=False), range(4)))
    assert done == [cache / "tiny.pth"] * 4
    assert victim.read_text() == "precious"
    assert (cache / "tiny.pth").read_bytes() == (root / "tiny.pth").read_bytes()
    assert not list(cache.glob("tiny.pth.*.part"))


def test_planted_record_links_are_replaced_not_written_through(tiny_checkpoint, http_server, monkeypatch, tmp_path):
    """The .sha256 and .verified records are written as the checkpoint is: a new file renamed over the name,
    so a link planted there (to a file of the user's) is replaced and its target left alone."""
    root, url = http_server
    (root / "weights.pth").write_bytes(tiny_checkpoint[1].read_bytes())
    monkeypatch.setenv("XSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XSEARCH_CHECKPOINT", raising=False)
    cache = tmp_path / "home" / "checkpoints"
    cache.mkdir(parents=True)
    victims = {name: tmp_path / f"victim{name}" for name in (".sha256", ".verified")}
    for name, victim in victims.items():
        victim.write_text("the user's own file")
        (cache / f"imagebind_huge.pth{name}").symlink_to(victim)
    path = resolve_checkpoint(url=f"{url}/weights.pth")
    resolve_checkpoint()  # writes .verified
    assert all(victim.read_text() == "the user's own file" for victim in victims.values())
    assert not (cache / "imagebind_huge.pth.sha256").is_symlink() and path.is_file()
