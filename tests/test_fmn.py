"""Tests of the Fast Minimum-Norm L2 attack (lpc_geom.analysis.robustness.fmn).

Checked against closed forms (linear classifiers, a flat-then-steep logit) and against foolbox's
``L2FMNAttack`` on a small MLP trained on the digits in the test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.analysis.robustness import deepfool, fmn
from lpc_geom.analysis.robustness.fmn import REASON_ZERO_GRADIENT
from lpc_geom.models import build_model


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP trained for about a second on sklearn's digits (standardised), and 150 held-out inputs."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-8), dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:1500]), y[:1500]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    x_test = x[1500:1650]
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y[1500:1650]).float().mean() > 0.85
    return model, x_test


def _foolbox_distances(model, x, attack):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(-math.inf, math.inf))  # normalised inputs: no box
    with torch.no_grad():
        labels = model(x).argmax(1)
    _, adversarial, success = attack(fmodel, x, fb.criteria.Misclassification(labels), epsilons=None)
    distances = (adversarial - x).norm(dim=1)
    distances[~success] = math.inf
    return distances


def _projected_l2fmn():
    """foolbox's L2FMNAttack with the projection onto the epsilon ball that its ``project`` means to do.

    foolbox 3.3.4's ``L2FMNAttack.project`` scales by ``min(1, norms / norms)``, i.e. never projects, so its
    iterates walk on past the boundary and it reports the first adversarial iterate. With the projection
    of Algorithm 1 of the paper it is the reference algorithm proper.
    """
    import eagerpy as ep
    from foolbox.attacks import L2FMNAttack
    from foolbox.devutils import atleast_kd, flatten

    class ProjectedL2FMN(L2FMNAttack):
        def project(self, x, x0, epsilon):
            delta = x - x0
            norms = ep.maximum(flatten(delta).norms.l2(axis=-1), 1e-12)
            return x0 + delta * atleast_kd(ep.minimum(1, epsilon / norms), x.ndim)

    return ProjectedL2FMN()


def test_fmn_against_foolbox(digits_mlp):
    pytest.importorskip("foolbox", reason="foolbox (the test extra) is not installed")
    from foolbox.attacks import L2FMNAttack

    model, x = digits_mlp
    result = fmn(model, x)
    assert result.success.all(), set(result.reasons)
    # every returned point is misclassified, evaluated at once and in other batch sizes
    with torch.no_grad():
        clean = model(x).argmax(1)
        assert torch.equal(result.labels, clean)
        for chunk in (len(x), 7, 1):
            pred = torch.cat([model(part).argmax(1) for part in result.adversarial.split(chunk)])
            assert (pred != clean).all()
            assert torch.equal(pred, result.adversarial_labels)
    torch.testing.assert_close(result.norms, (result.adversarial - x).norm(dim=1))
    torch.testing.assert_close(result.relative_norms, result.norms / x.norm(dim=1))

    for reference in (L2FMNAttack(), _projected_l2fmn()):  # foolbox as shipped, and with its projection
        theirs = _foolbox_distances(model, x, reference)
        assert torch.isfinite(theirs).float().mean() >= 0.95
        same_or_smaller = result.norms <= theirs * (1 + 1e-3)
        assert same_or_smaller.float().mean() >= 0.95, (type(reference).__name__, same_or_smaller.float().mean())

    # The same algorithm with foolbox's settings (start at 0, step 1, no tolerance nor refinement) retraces
    # the projected reference.
    plain = fmn(model, x, init="zero", step_size=1.0, refine_steps=0, tolerance=0.0)
    reference = _foolbox_distances(model, x, _projected_l2fmn())
    close = (plain.norms - reference).abs() <= 1e-4 * reference
    assert close.float().mean() >= 0.95


def test_fmn_is_never_longer_than_deepfool_refined(digits_mlp):
    model, x = digits_mlp
    result = fmn(model, x[:60])
    df = deepfool(model, x[:60], refine_steps=20)
    assert result.success.all() and df.success.all()
    assert (result.norms <= df.refined_norms * (1 + 1e-2)).all()
    assert result.norms.mean() < df.norms.mean()


def _linear_distances(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """min over j != k of |f_k - f_j| / ||w_k - w_j||, k the prediction: the exact minimal L2 distance."""
    with torch.no_grad():
        f = linear(x)
        k = f.argmax(1)
        w = linear.weight
        diff_w = (w[k][:, None, :] - w[None, :, :]).norm(dim=2)  # (n, K)
        gap = f.gather(1, k[:, None]) - f
        distance = gap / diff_w
        distance[torch.arange(len(x)), k] = math.inf
        return distance.min(dim=1).values


@settings(max_examples=8)
@given(classes=st.integers(2, 8), dim=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_linear_classifier_closed_form(classes, dim, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(dim, classes).double()
    x = 2 * torch.randn(30, dim, dtype=torch.float64)
    exact = _linear_distances(linear, x)
    result = fmn(linear, x, steps=50)
    df = deepfool(linear, x, refine_steps=30)
    assert result.success.all()
    with torch.no_grad():
        scale = linear(x).abs().amax(1)
    # valid points cannot beat the minimum; the tolerance costs at most tau * max|f| / ||w_k - w_j||
    slack = 1e-6 * exact + 2e-5 * scale / linear.weight.norm(dim=1).min() + 1e-9
    assert (result.norms >= exact - 1e-9).all()
    assert (result.norms <= exact + slack).all(), (result.norms - exact).max()
    assert (result.norms <= df.refined_norms + slack).all()


def test_binary_linear_from_zero_reaches_the_hyperplane():
    torch.manual_seed(3)
    linear = nn.Linear(10, 2).double()
    x = torch.randn(25, 10, dtype=torch.float64)
    w = linear.weight[1] - linear.weight[0]
    b = linear.bias[1] - linear.bias[0]
    exact = ((x @ w + b).abs() / w.norm()).detach()
    result = fmn(linear, x, init="zero", tolerance=0.0)
    torch.testing.assert_close(result.norms, exact, rtol=1e-6, atol=1e-9)


class _FlatThenSteep(nn.Module):
    """Logit difference -1 + 0.01 z + 10 relu(z - 1) of z = u.x: linearised at 0 the boundary seems at z = 100,
    it is at z* = 11 / 10.01."""

    def __init__(self, dim: int):
        super().__init__()
        u = torch.zeros(dim, dtype=torch.float64)
        u[0], u[1] = 0.6, 0.8
        self.register_buffer("u", u)

    def forward(self, x):
        z = x @ self.u
        g = -1.0 + 0.01 * z + 10.0 * torch.relu(z - 1.0)
        return torch.stack([torch.zeros_like(g), g], dim=1)


# From 0 the first step overshoots a hundredfold and the radius shrinks by at most gamma per step: only the
# refinement brings it near the boundary; from DeepFool's point the warm-start bisection finds it.
@pytest.mark.parametrize(("init", "rtol"), [("both", 1e-4), ("zero", 1e-2), ("deepfool", 1e-4)])
def test_flat_then_steep_boundary(init, rtol):
    x = torch.zeros(3, 5, dtype=torch.float64)
    x[:, 2:] = torch.randn(3, 3, dtype=torch.float64)
    result = fmn(_FlatThenSteep(5), x, init=init)
    assert result.success.all()
    z_star = torch.full((3,), 11.0 / 10.01, dtype=torch.float64)
    assert (result.norms >= z_star * (1 - 1e-12)).all()
    torch.testing.assert_close(result.norms, z_star, rtol=rtol, atol=0)


def test_unfooled_samples_are_inf_with_a_reason_and_given_labels():
    frozen = nn.Linear(4, 3)
    nn.init.zeros_(frozen.weight)
    with torch.no_grad():
        frozen.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    result = fmn(frozen, torch.randn(5, 4), steps=5)
    assert not result.success.any()
    assert (result.norms == math.inf).all() and (result.relative_norms == math.inf).all()
    assert torch.isnan(result.adversarial).all() and torch.isnan(result.perturbations).all()
    assert (result.adversarial_labels == -1).all() and torch.isnan(result.refine_scales).all()
    assert result.reasons == (REASON_ZERO_GRADIENT,) * 5
    summary = result.summary()
    assert summary["fmn_mean_relative_norm"] == math.inf and summary["fmn_success_rate"] == 0.0

    # given labels: misclassified inputs succeed at distance 0, the others are attacked
    torch.manual_seed(1)
    linear = nn.Linear(6, 3)
    x = torch.randn(8, 6)
    with torch.no_grad():
        pred = linear(x).argmax(1)
    labels = pred.clone()
    labels[:3] = (pred[:3] + 1) % 3
    out = fmn(linear, x, labels)
    assert out.success.all() and torch.equal(out.labels, labels)
    assert (out.norms[:3] == 0).all() and (out.norms[3:] > 0).all()
    with torch.no_grad():
        assert (linear(out.adversarial).argmax(1) != labels).all()
    empty = fmn(linear, torch.zeros(0, 6))
    assert len(empty) == 0 and empty.reasons == () and math.isnan(empty.summary()["fmn_median_norm"])


def test_bounds_batches_modes_and_grads():
    torch.manual_seed(0)
    model = build_model("mlp", "LPC", (12,), 4, hidden=(16,), latent_dim=6)  # returns a HeadOutput
    model.train()
    x = torch.randn(20, 12).clamp(-1.5, 1.5)
    result = fmn(model, x, bounds=(-1.5, 1.5), batch_size=7)
    assert model.training and all(p.grad is None for p in model.parameters())
    ok = result.success
    assert ok.any()
    assert (result.adversarial[ok] >= -1.5).all() and (result.adversarial[ok] <= 1.5).all()
    with torch.no_grad():
        model.eval()
        assert (model(result.adversarial[ok]).logits.argmax(1) != result.labels[ok]).all()
    # Rows are attacked independently; only rounding differs between batch compositions (a start within
    # rounding of the tolerance may count in one and not in the other).
    whole = fmn(model, x, bounds=(-1.5, 1.5))
    both = whole.success & result.success
    assert both.float().mean() >= 0.8
    torch.testing.assert_close(whole.norms[both], result.norms[both], rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="outside bounds; FMN"):
        fmn(model, 3 * torch.ones(2, 12), bounds=(-1.5, 1.5))


def test_given_deepfool_points_are_the_start_fmn_would_compute(digits_mlp):
    model, x = digits_mlp
    own = fmn(model, x, steps=30)
    points = deepfool(model, x, refine_steps=5).adversarial  # the refinement leaves DeepFool's points alone
    given = fmn(model, x, steps=30, deepfool_points=points)
    for field in ("norms", "adversarial", "success", "adversarial_labels", "refine_scales"):
        assert torch.equal(getattr(given, field).nan_to_num(), getattr(own, field).nan_to_num()), field
    zero = fmn(model, x, steps=30, init="zero")
    assert torch.equal(fmn(model, x, steps=30, init="zero", deepfool_points=points).norms, zero.norms)
    with pytest.raises(ValueError, match="deepfool_points must have the shape"):
        fmn(model, x, steps=3, deepfool_points=points[:5])


def test_bad_arguments_are_named():
    linear = nn.Linear(4, 3)
    x = torch.randn(3, 4)
    for kwargs, words in [({"steps": 0}, "steps"), ({"batch_size": 0}, "batch_size"),
                          ({"refine_steps": -1}, "refine_steps"), ({"step_size": -1.0}, "step_size"),
                          ({"final_step_size": math.inf}, "final_step_size"), ({"gamma": 1.0}, "gamma"),
                          ({"final_gamma": 0.0}, "final_gamma"), ({"tolerance": -1e-3}, "tolerance"),
                          ({"init": "pgd"}, "init must be one of"), ({"init": torch.zeros(2, 4)}, "shape")]:
        with pytest.raises(ValueError, match=words):
            fmn(linear, x, **kwargs)
    with pytest.raises(ValueError, match="labels must be integers"):
        fmn(linear, x, torch.zeros(3))
    with pytest.raises(ValueError, match="labels must lie"):
        fmn(linear, x, torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        fmn(nn.Linear(4, 1), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(digits_mlp):
    model, x = digits_mlp
    cpu = fmn(model, x[:40])
    gpu = fmn(model.cuda(), x[:40].cuda())
    model.cpu()
    assert gpu.success.all()
    torch.testing.assert_close(gpu.norms, cpu.norms, rtol=1e-2, atol=1e-4)
