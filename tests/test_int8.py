"""The int8 CPU path: towers exported to ONNX with int8 weights, run by ONNX Runtime (``xsearch[cpu]``).

On the tiny model: int8 vectors equal fp32 ones within cosine 0.999 for every exported tower and any batch
size; an export is cached and reused, another checkpoint's weights get their own, and a killed export leaves
nothing a later run would take for finished. The full-size audio tower (random weights) is checked too (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsearch import Collection
from xsearch.encoder import Encoder, resolve_precision
from xsearch.errors import UsageError
from xsearch.model import create_model
from xsearch.testing.media import gradient_image, tone, write_map, write_video, write_wav

pytest.importorskip("onnxruntime", reason="ONNX Runtime is the int8 path's engine (pip install 'xsearch[cpu]')")


def _pair(home, seed: int = 0, name: str = "tiny_test"):
    torch.manual_seed(seed)
    fp32 = Encoder(create_model(name), device="cpu", precision="fp32")
    torch.manual_seed(seed)
    int8 = Encoder(create_model(name), device="cpu", precision="int8")
    int8.int8.cache = home / "int8"
    return fp32, int8


@pytest.fixture
def media(tmp_path):
    return {
        "image": [gradient_image(tmp_path / f"{i}.jpg", seed=i) for i in range(3)],
        "video": [tmp_path / "v.mp4"],
        "audio": [write_wav(tmp_path / "a.wav", tone(2.5, 16000), 16000)],
        "depth": [write_map(tmp_path / "d.png")],
        "thermal": [write_map(tmp_path / "t.png", seed=3)],
    } | ({"video": [write_video(tmp_path / "v.mp4", seconds=2.0)]})


def test_int8_equals_fp32_within_cosine_0999_on_every_exported_tower(tmp_path, media):
    fp32, int8 = _pair(tmp_path)
    for modality, files in media.items():
        a = np.stack([r.embedding for r in Collection(None, encoder=fp32).embed(files, modality=modality)])
        b = np.stack([r.embedding for r in Collection(None, encoder=int8).embed(files, modality=modality)])
        assert (a * b).sum(1).min() >= 0.999, modality
        one = (
            Collection(None, encoder=int8).embed(files[:1], modality=modality)[0].embedding
        )  # another batch size than exported
        assert float(one @ b[0]) >= 0.999  # activations are quantised per batch: close, not bit-equal
    texts = ["a dog barking", "rain on a tin roof", "x"]
    assert (fp32.encode_text(texts).numpy() * int8.encode_text(texts).numpy()).sum(1).min() >= 0.999
    assert not np.allclose(a, b)  # it is the int8 path, not the fp32 one under another name
    import onnx

    for export in (tmp_path / "int8").glob("*/model.int8.onnx"):  # every weight's MatMul quantised
        graph = onnx.load(str(export)).graph
        weights = {tensor.name for tensor in graph.initializer}
        floats = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
        assert floats == [] and any(n.op_type == "MatMulInteger" for n in graph.node), export.parent.name


def test_exports_are_cached_and_keyed_by_the_weights(tmp_path, media, monkeypatch):
    from xsearch.int8 import Int8Towers

    _, first = _pair(tmp_path)
    Collection(None, encoder=first).embed(media["image"], modality="image")
    exported = sorted(p.name for p in (tmp_path / "int8").iterdir() if p.is_dir())
    assert len(exported) == 1
    # The export and its checksum only: no fp32 model (a tower over 2 GB leaves one file per weight beside it).
    assert sorted(p.name for p in (tmp_path / "int8" / exported[0]).iterdir()) == [
        "model.int8.onnx",
        "model.int8.onnx.sha256",
    ]

    def refuse(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(Int8Towers, "_export", refuse)
    _, again = _pair(tmp_path)  # the same weights, a new process's encoder
    Collection(None, encoder=again).embed(media["image"], modality="image")  # reused: no export
    monkeypatch.undo()
    _, other = _pair(tmp_path, seed=1)  # another checkpoint: its own export
    Collection(None, encoder=other).embed(media["image"], modality="image")
    assert len([p for p in (tmp_path / "int8").iterdir() if p.is_dir()]) == 2


def test_a_killed_export_leaves_nothing_half_written(tmp_path, media, monkeypatch):
    from xsearch.int8 import Int8Towers

    original = Int8Towers._export

    def dies_halfway(self, tower, example, folder):
        (folder / "model.int8.onnx").write_bytes(b"half an export")
        raise KeyboardInterrupt  # as a kill would stop it

    monkeypatch.setattr(Int8Towers, "_export", dies_halfway)
    _, int8 = _pair(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Collection(None, encoder=int8).embed(media["image"], modality="image")
    assert [p for p in (tmp_path / "int8").iterdir() if p.is_dir()] == []  # no folder, finished or not
    monkeypatch.setattr(Int8Towers, "_export", original)
    assert Collection(None, encoder=int8).embed(media["image"], modality="image")[0].embedding is not None


def test_a_damaged_truncated_or_planted_export_is_made_again_never_run(tmp_path, media):
    """The cache is checked against the checksum recorded at export: flipped bytes, a truncated file, a folder
    replaced by a link (to another export) and a killed export's leftovers are all made again."""
    import shutil

    fp32, int8 = _pair(tmp_path)
    clean = int8.encode_text(["a dog barking"]).numpy()
    exports = [p for p in (tmp_path / "int8").iterdir() if p.is_dir()]
    assert len(exports) == 1 and (exports[0] / "model.int8.onnx.sha256").is_file()
    model = exports[0] / "model.int8.onnx"
    other = tmp_path / "planted"
    shutil.copytree(exports[0], other)

    def damage_flip():
        data = bytearray(model.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + len(data) // 10):
            data[i] ^= 0xFF
        model.write_bytes(data)

    def damage_truncate():
        model.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 3])

    def damage_link():
        shutil.rmtree(exports[0])
        exports[0].symlink_to(other)

    def damage_leftover():  # an export killed halfway (after this one was lost), then a new run
        shutil.rmtree(exports[0])
        (tmp_path / "int8" / f"{exports[0].name}.killed").mkdir()

    for damage in (damage_flip, damage_truncate, damage_link, damage_leftover):
        damage()
        _, again = _pair(tmp_path)  # a new process's encoder
        vectors = again.encode_text(["a dog barking"]).numpy()
        np.testing.assert_allclose(vectors, clean, atol=1e-6, err_msg=damage.__name__)
        assert not exports[0].is_symlink() and (exports[0] / "model.int8.onnx").is_file(), damage.__name__
    assert other.is_dir() and (other / "model.int8.onnx").is_file()  # a link's target is never touched
    assert sorted(p.name for p in (tmp_path / "int8").iterdir() if p.is_dir()) == [exports[0].name]


def test_an_unwritable_int8_cache_is_one_clear_line(tmp_path):
    from xsearch.errors import XsearchError

    (tmp_path / "file").write_text("not a folder")
    _, int8 = _pair(tmp_path)
    int8.int8.cache = tmp_path / "file" / "int8"
    with pytest.raises(XsearchError, match=r"cannot keep int8 exports here .*--precision fp32"):
        int8.encode_text(["a dog barking"])


def test_without_onnxruntime_int8_is_one_clear_line(monkeypatch):
    import xsearch.int8

    monkeypatch.setattr(xsearch.int8, "onnxruntime_available", lambda: False)
    with pytest.raises(UsageError, match=r"pip install 'xsearch\[cpu\]'") as raised:
        resolve_precision("int8", torch.device("cpu"))
    assert raised.value.argument == "precision"
    with pytest.raises(UsageError, match="runs on the CPU"):
        resolve_precision("int8", torch.device("cuda"), onnxruntime=True)


FULL_SIZE = """
import sys
from pathlib import Path

import torch

from xsearch.encoder import Encoder
from xsearch.model import create_model

tower, cache = sys.argv[1], sys.argv[2]
batches = {
    "audio": lambda: torch.randn(2, 3, 1, 128, 204, generator=torch.Generator().manual_seed(1)),
    "text": lambda: torch.randint(1, 49000, (2, 77), generator=torch.Generator().manual_seed(2)),
    "vision": lambda: torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)),
}
batch = batches[tower]()
if tower == "text":
    batch[:, 10], batch[:, 11:] = 49407, 0  # an end token, then padding
torch.manual_seed(0)
model = create_model("imagebind_huge", towers=[tower])
fp32 = Encoder(model, device="cpu", precision="fp32")
int8 = Encoder(model, device="cpu", precision="int8")
int8.int8.cache = Path(cache)
a, b = fp32.encode(tower, batch).numpy(), int8.encode(tower, batch).numpy()
print(float((a * b).sum(1).min()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("tower", ["audio", "text", "vision"])  # 85M, 302M, 630M parameters (~5 GB to export)
def test_the_full_size_towers_in_int8(tmp_path, tower):
    """imagebind_huge's towers (random weights): int8 within cosine 0.999 of fp32. Each in a process of its
    own: the vision tower's export peaks near 5 GB (10 GB before xsearch quantised a weight at a time), which
    the test process would keep for the rest of the run (the allocator does not give it back)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FULL_SIZE, tower, str(tmp_path / "int8")], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) >= 0.999


def test_weight_transposes_fold_in_a_model_whose_weights_are_files(tmp_path):
    """ImageBind-huge's vision tower (over 2 GB) is exported with a file per weight: the fold reads and
    writes them one at a time, and the model computes what it did."""
    pytest.importorskip("onnxruntime", reason="int8 needs ONNX Runtime (the test extra installs it)")
    import onnx
    import onnxruntime as ort

    from xsearch.quantise import fold_weight_transposes

    layer = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(3, 5, 16)  # tokens: a linear layer becomes MatMul(x, Transpose(W))
    inline = tmp_path / "inline.onnx"
    with torch.no_grad():
        torch.onnx.export(layer, (x,), str(inline), input_names=["x"], dynamo=False, do_constant_folding=False)
    folder = tmp_path / "files"
    folder.mkdir()
    model = onnx.load(str(inline))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)  # fmt: skip
    before = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"x": x.numpy()})[0]
    assert fold_weight_transposes(folder / "model.onnx") == 2
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert not any(node.op_type == "Transpose" for node in graph.node)
    after = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    expected = {t.name for t in graph.initializer}  # every file read by a weight, none left unread
    named = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert {p.name for p in folder.iterdir()} == named | {"model.onnx"} and len(named) == len(expected)


@pytest.mark.parametrize("seven_bits", [True, False])
def test_our_weight_by_weight_quantiser_gives_onnx_runtimes_outputs(tmp_path, seven_bits):
    """The recipe of ``quantize_dynamic`` (per-channel int8 weights, activations quantised per call), written
    a weight at a time: on the text tower (the one where a scale of absmax/63 instead of /64 cost 0.0008 of
    cosine) both give the same vectors."""
    pytest.importorskip("onnxruntime", reason="int8 needs ONNX Runtime (the test extra installs it)")
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from xsearch.int8 import _TowerInput
    from xsearch.modalities import Tower
    from xsearch.model import create_model
    from xsearch.model.config import get_config
    from xsearch.quantise import fold_weight_transposes, quantise_weights

    torch.manual_seed(0)
    module = _TowerInput(create_model(get_config("tiny_test"), towers=[Tower.TEXT]).eval(), Tower.TEXT).eval()
    tokens = torch.randint(0, 49408, (3, 77))
    fp32 = tmp_path / "fp32.onnx"
    with torch.no_grad():
        reference = module(tokens).numpy()
        axes = {"x": {0: "b"}, "y": {0: "b"}}
        torch.onnx.export(module, (tokens,), str(fp32), input_names=["x"], output_names=["y"], dynamic_axes=axes,
                          dynamo=False, do_constant_folding=False)  # fmt: skip
    fold_weight_transposes(fp32)
    quantize_dynamic(str(fp32), str(tmp_path / "theirs.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=seven_bits, op_types_to_quantize=["MatMul"])  # fmt: skip
    assert quantise_weights(fp32, tmp_path / "ours.onnx", seven_bits=seven_bits) == 9
    ours, theirs = (
        ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, {"x": tokens.numpy()})[0]
        for name in ("ours", "theirs")
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours, reference)  # quantised, not the float model under another name
