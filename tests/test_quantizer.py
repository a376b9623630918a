import pytest
import torch

from harmoq_deploy.errors import HarmoqError
from harmoq_deploy.quant import UniformQuantizer, check_bits
from harmoq_deploy.quant.quantizer import fake_quantize


def calibrated(bits, lower, upper, **kwargs):
    q = UniformQuantizer(bits, **kwargs)
    q.set_bounds(lower, upper)
    return q


@pytest.mark.parametrize("bits", range(2, 9))
def test_asymmetric_grid_has_2_to_the_bits_levels_between_the_bounds(bits):
    q = calibrated(bits, -0.7, 1.3)
    x = torch.linspace(-3, 3, 20001)
    levels = torch.unique(q(x))
    assert len(levels) == 2**bits
    assert levels.min().item() == pytest.approx(-0.7) and levels.max().item() == pytest.approx(1.3)
    assert torch.allclose(levels.diff(), torch.full((2**bits - 1,), 2.0 / (2**bits - 1)), atol=1e-5)


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_grid_is_the_narrow_signed_grid_with_zero(bits):
    q = calibrated(bits, -2.0, 2.0, symmetric=True)
    levels = torch.unique(q(torch.linspace(-5, 5, 20001)))
    assert len(levels) == 2**bits - 1
    assert (levels == 0).any()
    ints = q.integers(torch.linspace(-5, 5, 101))
    assert ints.min() == -(2 ** (bits - 1) - 1) and ints.max() == 2 ** (bits - 1) - 1


def test_values_round_to_the_nearest_level_and_clip_at_the_bounds():
    q = calibrated(2, 0.0, 3.0)  # levels 0, 1, 2, 3
    x = torch.tensor([-1.0, 0.4, 0.6, 1.49, 2.51, 7.0])
    assert q(x).tolist() == [0.0, 0.0, 1.0, 1.0, 3.0, 3.0]
    assert q.integers(x).tolist() == [0, 0, 1, 1, 3, 3]


def test_rounding_passes_gradient_straight_through_inside_the_range():
    q = calibrated(3, -1.0, 1.0)
    x = torch.tensor([-2.0, -0.33, 0.1, 0.52, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_bound_gradients_come_from_clipped_values_and_the_step():
    q = calibrated(2, 0.0, 3.0)
    # All values clipped above: the output is u, so d/du = count, d/dl = 0.
    q(torch.tensor([5.0, 6.0])).sum().backward()
    assert q.upper.grad.item() == pytest.approx(2.0) and q.lower.grad.item() == pytest.approx(0.0)
    q.zero_grad()
    # Inside the range the straight-through gradient is the rounding residual over the step count:
    # x = 1.4 rounds to level 1, so d/du = (1 - 1.4)/3 and d/dl = (1.4 - 1)/3.
    q(torch.tensor([1.4])).sum().backward()
    assert q.upper.grad.item() == pytest.approx(-0.4 / 3) and q.lower.grad.item() == pytest.approx(0.4 / 3)
    q.zero_grad()
    # A value exactly on a level moves neither bound.
    q(torch.tensor([2.0])).sum().backward()
    assert q.upper.grad.item() == 0.0 and q.lower.grad.item() == 0.0


def test_gradient_descent_on_the_bounds_reduces_quantization_error():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((8192,))  # heavy tails: min/max bounds are poor
    q = calibrated(3, x.min().item(), x.max().item())
    initial = (q(x) - x).pow(2).mean().item()
    optimizer = torch.optim.Adam(q.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        (q(x) - x).pow(2).mean().backward()
        optimizer.step()
    final = (q(x) - x).pow(2).mean().item()
    assert final < 0.5 * initial


def test_per_channel_bounds_apply_along_the_channel_axis():
    q = UniformQuantizer(2, channel_axis=0, num_channels=2)
    q.set_bounds(torch.tensor([0.0, -3.0]), torch.tensor([3.0, 0.0]))
    w = torch.tensor([[1.2, 2.9, -1.0], [-1.2, -2.9, 1.0]])
    assert q(w).tolist() == [[1.0, 3.0, 0.0], [-1.0, -3.0, 0.0]]
    conv_like = torch.zeros(2, 3, 3, 3)
    assert q(conv_like).shape == conv_like.shape


def test_per_channel_gradients_stay_in_their_channel():
    q = UniformQuantizer(2, channel_axis=0, num_channels=3)
    q.set_bounds(-torch.ones(3), 2 * torch.ones(3))  # levels -1, 0, 1, 2: zeros sit on a level
    w = torch.zeros(3, 5)
    w[1] = 4.0  # only channel 1 clips
    q(w).sum().backward()
    assert q.upper.grad.tolist() == [0.0, 5.0, 0.0]


def test_disabled_quantizer_is_the_identity_and_uncalibrated_one_refuses():
    q = UniformQuantizer(4)
    with pytest.raises(RuntimeError, match="calibration"):
        q(torch.ones(3))
    q.enabled = False
    x = torch.randn(7)
    assert torch.equal(q(x), x)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 3.5])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(HarmoqError, match="from 2 to 8"):
        check_bits(bits)
    with pytest.raises(HarmoqError):
        UniformQuantizer(bits)


def test_bounds_are_stored_exactly_and_checked():
    q = UniformQuantizer(3)
    q.set_bounds(-0.123456789, 0.987654321)
    assert q.lower.item() == torch.tensor(-0.123456789).item()
    with pytest.raises(ValueError):
        q.set_bounds(1.0, 0.0)
    with pytest.raises(ValueError):
        q.set_bounds(0.0, float("nan"))


def _autograd_reference(x, lower, upper, levels):
    step = (upper - lower).clamp_min(1e-8) / levels
    scaled = (torch.clamp(x, lower, upper) - lower) / step
    return (scaled + (torch.round(scaled) - scaled).detach()) * step + lower


@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_fake_quantize_matches_autograd_through_the_formula(per_channel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 2
    shape = (1, 3, 1, 1) if per_channel else ()
    lower = (-1 - torch.rand(shape, generator=g))
    upper = (1 + torch.rand(shape, generator=g))
    grad_out = torch.randn(x.shape, generator=g)
    results = []
    for fn in (fake_quantize, _autograd_reference):
        xs, ls, us = (t.clone().requires_grad_(True) for t in (x, lower, upper))
        out = fn(xs, ls, us, 7)
        out.backward(grad_out)
        results.append((out.detach(), xs.grad, ls.grad, us.grad))
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
