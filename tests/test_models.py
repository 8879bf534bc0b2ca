"""Model registry contract: shapes, std head, size checks, rebuild from config, JTFN extras."""

from __future__ import annotations

import pytest
import torch

from cirl.models import MODELS, SegOutput, build_model
from cirl.models.jtfn import boundary_target, jtfn_deep_supervision_loss

SMALL = ["unet-small", "jtfn-small"]
# The full-width names are checked at a tiny width so the file stays fast.
ALL = [(name, {}) for name in SMALL] + [("unet", {"base_width": 4}), ("jtfn", {"base_width": 4})]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _image(h: int = 64, w: int = 96, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w)


def test_registry_names() -> None:
    assert set(MODELS) == {"unet", "unet-small", "jtfn", "jtfn-small"}


@pytest.mark.parametrize("std_head", [True, False])
@pytest.mark.parametrize(("name", "kw"), ALL)
def test_output_shapes(name: str, kw: dict, std_head: bool) -> None:
    model = build_model(name, std_head=std_head, **kw)
    out = model(_image())
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (1, 1, 64, 96)
    assert out.features.shape[0] == 1 and out.features.shape[2:] == (64, 96)
    if std_head:
        assert out.log_var is not None and out.log_var.shape == (1, 1, 64, 96)
        assert model.std_head.in_channels == out.features.shape[1]
    else:
        assert out.log_var is None and model.std_head is None
    if name.startswith("unet"):
        assert out.aux_logits == () and out.boundary_logits == ()
    else:
        iterations = model.iterations
        assert len(out.aux_logits) == 4 * iterations - 1
        assert len(out.boundary_logits) == 4 * iterations
        sizes = {t.shape[2:] for t in out.aux_logits + out.boundary_logits}
        assert sizes == {(64, 96), (32, 48), (16, 24), (8, 12)}
        assert all(t.shape[:2] == (1, 1) for t in out.aux_logits + out.boundary_logits)


@pytest.mark.parametrize("name", SMALL)
def test_drop_std_head(name: str) -> None:
    model = build_model(name)
    assert any(k.startswith("std_head.") for k in model.state_dict())
    model.drop_std_head()
    assert model.std_head is None
    assert not any(k.startswith("std_head.") for k in model.state_dict())
    assert model(_image()).log_var is None
    assert model.config["std_head"] is False
    rebuilt = build_model(**model.config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'") as info:
        build_model("resnet")
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", SMALL)
def test_size_not_multiple_of_stride(name: str) -> None:
    model = build_model(name)
    assert model.stride == 16
    with pytest.raises(ValueError, match=r"stride 16.*64x90"):
        model(_image(64, 90))


def test_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        build_model("unet-small")(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize(("name", "kw"), [*ALL, ("jtfn-small", {"iterations": 3})])
def test_rebuild_from_config(name: str, kw: dict) -> None:
    model = build_model(name, **kw)
    assert model.config == {"name": name, **kw}
    rebuilt = build_model(**model.config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(model.state_dict())  # shapes match too


def test_normalisation_is_not_in_state_dict() -> None:
    model = build_model("unet-small")
    assert not any(k in {"mean", "std"} for k in model.state_dict())


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_first_conv(name: str) -> None:
    model = build_model(name)
    first_conv = model.encoder[0][0]
    out = model(_image(32, 32, n=2))
    for value in (out.logits, out.log_var):
        model.zero_grad()
        value.mean().backward(retain_graph=True)
        assert first_conv.weight.grad is not None
        assert first_conv.weight.grad.abs().sum() > 0


def test_boundary_target_hand_computed() -> None:
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 1.0
    mask[0, 0, 0, 4] = 1.0
    expected = torch.tensor(
        [
            [0, 0, 0, 1, 0],
            [0, 1, 1, 1, 1],
            [0, 1, 0, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(boundary_target(mask)[0, 0], expected)


def test_deep_supervision_loss() -> None:
    model = build_model("jtfn-small", std_head=False)
    out = model(_image(32, 32, n=2))
    mask = (torch.rand(2, 1, 32, 32) > 0.9).float()
    loss = jtfn_deep_supervision_loss(out, mask)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()

    valid = torch.zeros_like(mask)
    valid[..., :16, :] = 1.0
    masked = jtfn_deep_supervision_loss(out, mask, valid)
    assert torch.isfinite(masked) and masked > 0
    assert not torch.isclose(masked, loss)


def test_deep_supervision_loss_without_heads_is_zero() -> None:
    out = build_model("unet-small", std_head=False)(_image(32, 32))
    assert jtfn_deep_supervision_loss(out, torch.zeros(1, 1, 32, 32)) == 0


def test_deep_supervision_loss_hand_computed() -> None:
    logits = torch.zeros(1, 1, 4, 4)
    out = SegOutput(logits, None, logits, (torch.zeros(1, 1, 2, 2),), (logits,))
    # Zero logits: BCE is log 2 everywhere, whatever the targets.
    loss = jtfn_deep_supervision_loss(out, torch.ones(1, 1, 4, 4))
    assert torch.isclose(loss, torch.log(torch.tensor(2.0)))


def test_jtfn_feedback_changes_logits() -> None:
    two = build_model("jtfn-small", iterations=2).eval()
    one = build_model("jtfn-small", iterations=1).eval()
    one.load_state_dict(two.state_dict())
    x = _image(32, 32)
    with torch.no_grad():
        out_one, out_two = one(x), two(x)
    # The first pass of the 2-pass model is the 1-pass model.
    assert torch.allclose(out_two.aux_logits[0], out_one.logits, atol=1e-5)
    assert not torch.allclose(out_two.logits, out_one.logits, atol=1e-4)


def test_jtfn_rejects_zero_iterations() -> None:
    with pytest.raises(ValueError, match="iterations"):
        build_model("jtfn-small", iterations=0)


def test_checkpoint_round_trip_keeps_the_trained_std_head(tmp_path) -> None:
    from cirl.models.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint

    model = build_model("unet-small", base_width=4)
    with torch.no_grad():
        model.std_head.weight.fill_(0.25)
        model.std_head.bias.fill_(-3.0)
    save_checkpoint(
        tmp_path / "m.pt", {"model": model.state_dict(), "model_config": dict(model.config)}
    )
    payload = load_checkpoint(tmp_path / "m.pt")
    for std_head in (None, True):  # keep what the checkpoint has, or ask for it explicitly
        rebuilt = build_from_checkpoint(payload, std_head=std_head)
        assert torch.equal(rebuilt.std_head.bias, torch.tensor([-3.0]))
        assert torch.equal(rebuilt.std_head.weight, model.std_head.weight)
    dropped = build_from_checkpoint(payload, std_head=False)
    assert dropped.std_head is None
    x = _image(32, 32)
    model.eval(), dropped.eval()
    assert torch.equal(model(x).logits, dropped(x).logits)


def test_subnormal_weights_are_zeroed_for_export_and_kept_for_training():
    """Subnormal weights make x86 CPUs take a slow path; the exported model carries none,
    training keeps its weights bit for bit."""
    from cirl.models.checkpoint import build_from_checkpoint, zero_subnormal_

    torch.manual_seed(0)
    model = build_model("unet-small", base_width=4, std_head=False)
    first = next(model.parameters())
    with torch.no_grad():
        first.view(-1)[:3] = torch.tensor([1e-40, -5e-39, 1e-30])
    payload = {"model": model.state_dict(), "model_config": dict(model.config)}
    served = build_from_checkpoint(payload).eval()
    assert zero_subnormal_(served) == 2
    kept = build_from_checkpoint(payload)
    assert next(served.parameters()).view(-1)[:3].tolist() == [0.0, 0.0, pytest.approx(1e-30)]
    assert (next(kept.parameters()).view(-1)[:2] == first.view(-1)[:2]).all()
    assert (next(kept.parameters()).view(-1)[:2] != 0).all()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(served(x).logits, kept.eval()(x).logits, rtol=0, atol=1e-30)
    assert zero_subnormal_(served) == 0


def test_subnormals_as_zero_is_on_inside_the_block_only():
    from cirl.models.inference import subnormals_as_zero

    tiny = torch.tensor([1e-39, 1.0])
    assert (tiny * 1.0)[0].item() != 0  # IEEE: subnormals kept
    with subnormals_as_zero():
        assert (tiny * 1.0)[0].item() == 0  # flushed
        assert (tiny * 1.0)[1].item() == 1.0
    assert (tiny * 1.0)[0].item() != 0
