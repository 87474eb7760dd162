"""Our ImageBind against Meta's reference: same state_dict, same outputs (fp32, max abs diff <= 1e-4)."""

from __future__ import annotations

import pytest
import torch

from xsearch.modalities import Tower
from xsearch.model import TINY_TEST, create_model
from xsearch.testing.inputs import sample_inputs

TOLERANCE = 1e-4


def reference_model(reference, cfg):
    """The reference model with ``cfg``'s sizes."""
    kwargs = {"out_embed_dim": cfg.embed_dim}
    for tower in ("vision", "text", "audio", "depth", "thermal", "imu"):
        t = cfg.tower(tower)
        kwargs.update({f"{tower}_embed_dim": t.width, f"{tower}_num_blocks": t.layers, f"{tower}_num_heads": t.heads})
    return reference.model.ImageBindModel(**kwargs).eval()


def ours_from(ref_model, name):
    ours = create_model(name, device="meta")
    ours.load_state_dict(ref_model.state_dict(), strict=True, assign=True)
    return ours.eval()


@pytest.fixture(scope="module")
def tiny_pair(reference):
    torch.manual_seed(1)
    ref = reference_model(reference, TINY_TEST)
    return ref, ours_from(ref, "tiny_test")


def test_state_dict_keys_and_shapes_match_reference(reference):
    ref_state = reference_model(reference, TINY_TEST).state_dict()
    ours_state = create_model("tiny_test").state_dict()
    assert set(ours_state) == set(ref_state)
    assert {k: tuple(v.shape) for k, v in ours_state.items()} == {k: tuple(v.shape) for k, v in ref_state.items()}


@pytest.mark.parametrize("tower", [t.value for t in Tower])
def test_tiny_parity(tiny_pair, tower):
    ref, ours = tiny_pair
    x = sample_inputs(batch=2)[tower]
    with torch.no_grad():
        expected = ref({tower: x})[tower]
        got = ours.embed(tower, x)
    assert got.shape == (2, 1024)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_tiny_parity_video_clips(tiny_pair):
    """Video: [B, 15, 3, 2, 224, 224] clips, embedded per clip and averaged."""
    ref, ours = tiny_pair
    x = torch.randn(1, 15, 3, 2, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref({"vision": x})["vision"]
        got = ours.embed("vision", x)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_parity_detects_a_changed_weight(tiny_pair):
    """The comparison can fail: one perturbed parameter shows up in the output."""
    ref, _ = tiny_pair
    ours = create_model("tiny_test")
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ours.modality_trunks["audio"].blocks[0].attn.bias_k.add_(0.5)
        x = sample_inputs(batch=1)["audio"]
        assert (ours.embed("audio", x) - ref({"audio": x})["audio"]).abs().max().item() > TOLERANCE


def test_outputs_are_scaled_unit_vectors(tiny_model):
    x = sample_inputs(batch=2)
    x["audio"] = x["audio"][:, 0]  # one clip each: a mean over clips is shorter than the scale
    with torch.no_grad():
        out = tiny_model(x)
    norms = {k: v.norm(dim=-1) for k, v in out.items()}
    torch.testing.assert_close(norms["vision"], torch.ones(2))
    torch.testing.assert_close(norms["audio"], torch.full((2,), 20.0))
    torch.testing.assert_close(norms["depth"], torch.full((2,), 5.0))
    torch.testing.assert_close(norms["text"], torch.full((2,), 1 / 0.07))


def test_text_is_causal(tiny_model):
    """Changing a token after the end token changes nothing: the end token never attends forward."""
    x = sample_inputs(batch=1)["text"]
    y = x.clone()
    y[0, 40] = 1234
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.embed("text", x), tiny_model.embed("text", y))


def test_wrong_input_shape_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="patches"):
        tiny_model.embed("vision", torch.randn(1, 3, 112, 112))


@pytest.fixture(scope="module")
def huge_pair(reference):
    torch.manual_seed(2)
    ref = reference.model.imagebind_huge(pretrained=False).eval()
    return ref, ours_from(ref, "imagebind_huge")


@pytest.mark.slow
@pytest.mark.parametrize("tower", [t.value for t in Tower])
def test_huge_parity(huge_pair, tower):
    """The full imagebind_huge architecture, random weights, fp32 on CPU, one input per tower
    (two for the small towers)."""
    ref, ours = huge_pair
    batch = 1 if tower in ("vision", "audio") else 2
    x = sample_inputs(batch=batch, seed=5)[tower]
    with torch.no_grad():
        expected = ref({tower: x})[tower]
        got = ours.embed(tower, x)
    diff = (got - expected).abs().max().item()
    print(f"imagebind_huge {tower}: max abs diff {diff:.3g}")
    assert diff <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("tower", [t.value for t in Tower])
def test_huge_bf16_stays_within_cosine_0_999_of_fp32(huge_pair, tower):
    """The precision the CPU and GPU paths use by default: bf16 weights and activations, full architecture."""
    import copy

    import torch.nn.functional as F

    _, ours = huge_pair
    bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    x = sample_inputs(batch=2, seed=7)[tower][: 1 if tower in ("vision", "audio") else 2]
    with torch.no_grad():
        exact = F.normalize(ours.embed(tower, x), dim=-1)
        fast = F.normalize(bf16.embed(tower, x.to(torch.bfloat16) if x.is_floating_point() else x).float(), dim=-1)
    cosine = (exact * fast).sum(-1).min().item()
    print(f"imagebind_huge {tower}: bf16 vs fp32 min cosine {cosine:.6f}")
    assert cosine >= 0.999
