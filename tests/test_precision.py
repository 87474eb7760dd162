"""Speed without a GPU: precision choice, bf16 accuracy, towers loaded on demand, no torch where no model is
needed, the precision recorded in the database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xsearch import Collection, Modality
from xsearch.cli.main import app
from xsearch.encoder import Encoder, resolve_precision
from xsearch.errors import UsageError
from xsearch.modalities import Tower
from xsearch.model import create_model, open_checkpoint, save_checkpoint
from xsearch.model.choice import ModelChoice
from xsearch.store import Database, ItemRecord
from xsearch.testing.media import gradient_image, tone, write_imu, write_map, write_video, write_wav

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "flags, device, expected",
    [
        ({"avx512f", "amx_bf16", "amx_tile"}, CPU, "bf16"),  # Sapphire Rapids and later
        ({"avx512f", "avx512_bf16"}, CPU, "bf16"),  # Cooper Lake, Zen 4
        ({"avx2", "fma"}, CPU, "fp32"),  # no fast bf16 and no ONNX Runtime: fp32 is faster and exact
        (set(), torch.device("cuda"), "bf16"),
    ],
)
def test_auto_precision(flags, device, expected):
    assert resolve_precision("auto", device, frozenset(flags), onnxruntime=False) == expected
    assert resolve_precision("fp32", device, frozenset(flags)) == "fp32"


def test_auto_takes_the_fastest_path_measured_for_the_cpu_kind():
    """int8 wherever ONNX Runtime is installed, except with AMX: on AVX512-BF16 alone (Zen 4 servers) int8
    measured faster than bf16 on every tower (BENCHMARKS.md: 5.1-6.5x the reference against 1.7-4.0x)."""
    assert resolve_precision("auto", CPU, frozenset({"avx2", "fma"}), onnxruntime=True) == "int8"
    assert resolve_precision("auto", CPU, frozenset({"avx512f", "avx512_bf16"}), onnxruntime=True) == "int8"
    assert resolve_precision("auto", CPU, frozenset({"avx512_bf16", "amx_bf16"}), onnxruntime=True) == "bf16"


def test_unknown_precision_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown precision 'int4'") as raised:
        resolve_precision("int4", CPU)
    assert raised.value.argument == "precision"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {
        Modality.IMAGE: [gradient_image(root / f"{i}.jpg", seed=i) for i in range(3)],
        Modality.VIDEO: [write_video(root / "v.mp4", seconds=2.0)],
        Modality.AUDIO: [
            write_wav(root / f"{i}.wav", tone(2.0, 16000, 300 + 200 * i, seed=i), 16000) for i in range(2)
        ],
        Modality.DEPTH: [write_map(root / "d.png")],
        Modality.THERMAL: [write_map(root / "t.png", bits=8, seed=3)],
        Modality.IMU: [write_imu(root / "m.npy")],
    }


def test_bf16_vectors_stay_within_cosine_0_999_of_fp32(inputs):
    torch.manual_seed(0)
    fp32 = Encoder(create_model("tiny_test"), device="cpu", precision="fp32")
    torch.manual_seed(0)
    bf16 = Encoder(create_model("tiny_test"), device="cpu", precision="bf16")
    assert bf16.model.modality_trunks["vision"].blocks[0].attn.in_proj_weight.dtype == torch.bfloat16
    worst = 1.0
    for modality, files in inputs.items():
        a = np.stack([r.embedding for r in Collection(None, encoder=fp32).embed(files, modality=modality)])
        b = np.stack([r.embedding for r in Collection(None, encoder=bf16).embed(files, modality=modality)])
        assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
        worst = min(worst, float((a * b).sum(axis=1).min()))
    text = (fp32.encode_text(["a dog", "rain on a roof"]) * bf16.encode_text(["a dog", "rain on a roof"])).sum(1)
    worst = min(worst, float(text.min()))
    assert worst >= 0.999, worst


def test_towers_load_when_first_needed_and_match_a_full_load(tmp_path, inputs):
    torch.manual_seed(1)
    full = create_model("tiny_test")
    checkpoint = save_checkpoint(full, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
    reference = Encoder(full, device="cpu", precision="fp32")
    lazy = ModelChoice(checkpoint, device="cpu", precision="fp32").load()
    assert lazy.model.towers == []  # nothing loaded yet
    text = lazy.encode_text(["a dog barking"])
    assert lazy.model.towers == [Tower.TEXT]
    torch.testing.assert_close(text, reference.encode_text(["a dog barking"]), rtol=0, atol=0)
    sound = Collection(None, encoder=lazy).embed(inputs[Modality.AUDIO])[0].embedding
    assert sorted(lazy.model.towers) == sorted([Tower.TEXT, Tower.AUDIO])
    np.testing.assert_array_equal(sound, Collection(None, encoder=reference).embed(inputs[Modality.AUDIO])[0].embedding)
    assert sum(p.numel() for p in lazy.model.parameters()) < sum(p.numel() for p in full.parameters())


def test_a_wrong_checkpoint_fails_when_opened_not_when_a_tower_loads(tmp_path):
    from xsearch.errors import CheckpointError

    checkpoint = save_checkpoint(create_model("tiny_test"), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match="does not match ImageBind 'imagebind_huge'"):
        open_checkpoint(checkpoint, architecture="imagebind_huge")


def test_database_records_precision_and_info_shows_it(tmp_path, tiny_model):
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    write_wav(media / "b.wav", tone(2.0, 16000), 16000)
    Collection.open(tmp_path / "db", encoder=Encoder(tiny_model, device="cpu", precision="fp32")).index(
        [media], workers=0
    )
    facts = Collection.open(tmp_path / "db").info()
    assert facts["precision"] == {"fp32": 2}
    assert "precision fp32 (2 items)" in runner.invoke(app, ["info", "--db", str(tmp_path / "db")]).stdout


def test_a_database_from_before_precision_gains_the_column_when_written(tmp_path, tiny_model):
    """Schema-1 databases have no precision column: readers say "unknown", the next writer adds it."""
    import lancedb

    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord("/a.jpg", Modality.IMAGE, np.eye(1024, dtype=np.float32)[0])])
    table = lancedb.connect(str(tmp_path / "db")).open_table("items")
    table.drop_columns(["precision"])  # as written by an earlier xsearch
    assert Collection.open(tmp_path / "db").info()["precision"] == {"unknown": 1}
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "b.jpg")
    encoder = Encoder(tiny_model, device="cpu", precision="fp32")
    assert Collection.open(tmp_path / "db", encoder=encoder).index([media], workers=0).indexed == 1
    assert Collection.open(tmp_path / "db").info()["precision"] == {"unknown": 1, "fp32": 1}


def test_commands_without_a_model_import_no_torch(tmp_path):
    store = Database.open(tmp_path / "db", model_id="tiny_test", embed_dim=1024)
    store.add_items([ItemRecord(f"/m/{i}.jpg", Modality.IMAGE, np.eye(1024, dtype=np.float32)[i]) for i in range(3)])
    script = (
        "import sys\n"
        "from xsearch.cli.main import main\n"
        "sys.argv = ['xsearch', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    for args in (["search", "--item", "/m/1.jpg"], ["info"], ["errors"]):
        argv = [sys.executable, "-c", script, *args, "--db", str(tmp_path / "db")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "TORCH False", (args, done.stdout)


def test_cli_precision_option(tmp_path, tiny_model):
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.pt", notes={"architecture": "tiny_test"})
    media = tmp_path / "media"
    media.mkdir()
    gradient_image(media / "a.jpg")
    argv = ["index", str(media), "--db", str(tmp_path / "db"), "--checkpoint", str(checkpoint), "--json"]
    result = runner.invoke(app, [*argv, "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads(runner.invoke(app, ["info", "--db", str(tmp_path / "db"), "--json"]).stdout)["precision"] == {
        "bf16": 1
    }
    bad = runner.invoke(app, [*argv, "--precision", "int4"])
    assert bad.exit_code == 2 and "--precision: unknown precision 'int4'" in bad.output
