"""Encoder: unit float32 vectors for every modality; files grouped by modality, bad files reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsearch import Collection
from xsearch.encoder import Encoder
from xsearch.modalities import Modality
from xsearch.testing.media import gradient_image, tone, write_imu, write_map, write_video, write_wav


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder(tiny_model, device="cpu", precision="fp32")


def test_encode_text_unit_vectors(encoder):
    out = encoder.encode_text(["a dog", "rain on a roof", "a dog"])
    assert out.dtype == torch.float32 and out.shape == (3, 1024)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out[0], out[2])
    assert not torch.allclose(out[0], out[1])


def test_clip_inputs_are_averaged_then_normalised(encoder, tiny_model):
    clips = torch.randn(2, 3, 1, 128, 204)
    with torch.no_grad():
        per_clip = torch.nn.functional.normalize(tiny_model.embed("audio", clips.flatten(0, 1)), dim=-1)
    expected = torch.nn.functional.normalize(per_clip.view(2, 3, -1).mean(1), dim=-1)
    torch.testing.assert_close(encoder.encode("audio", clips), expected)


def test_embed_files_mixed(encoder, tmp_path):
    files = [
        gradient_image(tmp_path / "a.jpg"),
        write_wav(tmp_path / "b.wav", tone(2.5, 16000), 16000),
        write_video(tmp_path / "c.mp4", seconds=2.0),
        tmp_path / "broken.png",
        gradient_image(tmp_path / "d.png", seed=3),
        tmp_path / "notes.xyz",
    ]
    (tmp_path / "broken.png").write_bytes(b"nope")
    (tmp_path / "notes.xyz").write_text("?")
    results = Collection(None, encoder=encoder).embed(files)
    assert [r.path for r in results] == [str(f) for f in files]
    assert [r.modality for r in results] == [
        Modality.IMAGE,
        Modality.AUDIO,
        Modality.VIDEO,
        Modality.IMAGE,
        Modality.IMAGE,
        None,
    ]
    ok = [r for r in results if r.error is None]
    assert len(ok) == 4
    for r in ok:
        assert r.embedding.shape == (1024,) and abs(np.linalg.norm(r.embedding) - 1) < 1e-5
    assert "broken.png: its content is text, not image" in results[3].message  # as index says
    assert "notes.xyz: unknown file type" in results[5].message


def test_a_file_alone_gives_the_same_vector_as_in_a_batch(encoder, tmp_path):
    files = [gradient_image(tmp_path / f"{i}.png", size=(120 + 7 * i, 90), seed=i) for i in range(16)]
    batched = Collection(None, encoder=encoder).embed(files)  # one batch of 16
    vectors = np.stack([r.embedding for r in batched])
    assert len({tuple(np.round(v, 4)) for v in vectors}) == 16  # sixteen different inputs
    for path, expected in zip(files, vectors):
        np.testing.assert_allclose(Collection(None, encoder=encoder).embed([path])[0].embedding, expected, atol=1e-5)


def test_embed_files_with_explicit_modality(encoder, tmp_path):
    maps = [write_map(tmp_path / "m.png"), write_map(tmp_path / "n.npy")]
    depth = Collection(None, encoder=encoder).embed(maps, modality="depth")
    thermal = Collection(None, encoder=encoder).embed(maps, modality="thermal")
    assert all(r.error is None for r in depth + thermal)
    assert not np.allclose(depth[0].embedding, thermal[0].embedding)
    imu = Collection(None, encoder=encoder).embed([write_imu(tmp_path / "i.npy")], modality="imu")[0]
    assert imu.error is None and imu.modality is Modality.IMU


def test_each_towers_runner_is_chosen_once_and_not_shipped(encoder):
    """The path a tower's batches take (the model, or int8 through ONNX Runtime) is decided when the tower is
    first needed, not per batch; a pickled encoder (a cluster's actors) decides again where it lands."""
    import pickle

    from xsearch.modalities import Tower

    first = encoder.encode_text(["a dog barking"])
    runner = encoder._runner(Tower.TEXT)
    assert runner is encoder._runner(Tower.TEXT) and runner.func == encoder.model.embed  # fp32: the model
    assert torch.equal(encoder.encode_text(["a dog barking"]), first)
    shipped = pickle.loads(pickle.dumps(encoder))
    assert shipped._runners == {} and torch.allclose(shipped.encode_text(["a dog barking"]), first)
    assert shipped._runner(Tower.TEXT).func == shipped.model.embed


def test_the_encoder_makes_one_outcome_of_each_decoded_file_in_order(encoder, tmp_path):
    """Each stage makes its own record: ``decode`` a ``Decoded`` (model input, or why there is none), the
    encoder an ``Outcome`` of each (its vector, or the decode's error), in the order given."""
    from xsearch.decode import Decoded, Outcome, decode

    photo = gradient_image(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_text("not a picture")
    files = [decode(path, "image", encoder.preprocess) for path in (photo, tmp_path / "b.jpg", photo)]
    assert all(isinstance(f, Decoded) for f in files) and files[0].tensor is not None and files[1].error
    outcomes = encoder.encode_decoded(files)
    assert [type(o) for o in outcomes] == [Outcome] * 3 and [o.path for o in outcomes] == [f.path for f in files]
    assert outcomes[1].vector is None and outcomes[1].stage == "decode" and outcomes[1].message == files[1].message
    np.testing.assert_array_equal(outcomes[0].vector, outcomes[2].vector)
    assert files[0].tensor is None and not hasattr(outcomes[0], "tensor")  # the input freed, never carried on
