"""Loss terms against closed forms and direct loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lpc_geom import losses
from lpc_geom.ablation import ROWS, get_row
from lpc_geom.models import EuclideanHead, HeadOutput, build_head


def supcon_reference(features, labels, tau):
    """Khosla et al. (2020) L^sup_out, anchor by anchor, in float64 Python arithmetic.

    Each anchor's log-denominator is shifted by its largest logit (exp(1/tau) overflows float64 at tau = 1e-3).
    """
    f = [[float(v) for v in row] for row in features]
    u = [[v / math.sqrt(sum(a * a for a in row)) for v in row] for row in f]
    y = [int(v) for v in labels]
    n = len(u)
    terms = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i]]
        if not positives:
            continue
        dots = [sum(a * b for a, b in zip(u[i], u[j], strict=True)) / tau for j in range(n)]
        others = [dots[a] for a in range(n) if a != i]
        m = max(others)
        log_denominator = m + math.log(sum(math.exp(d - m) for d in others))
        terms.append(-sum(dots[p] - log_denominator for p in positives) / len(positives))
    return sum(terms) / len(terms)


# ------------------------------------------------------------------------------------------- compression


def test_compression_term_is_gamma_times_mean_squared_norm():
    torch.manual_seed(0)
    head = EuclideanHead(6, 3, penultimate="linear", latent_dim=4)
    with torch.no_grad():
        out = head(torch.randn(9, 6))
    expected = 0.37 * sum(float((z ** 2).sum()) for z in out.latents.detach()) / 9
    assert float(losses.compression_term(out.energy, 0.37)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.compression_term(out.energy, torch.tensor(2.0))) == pytest.approx(expected / 0.37 * 2, rel=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        losses.compression_term(out.energy, -1.0)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        losses.compression_term(out.latents, 1.0)


# ------------------------------------------------------------------------------------------------ supcon


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_supcon_matches_loop_reference(tau):
    torch.manual_seed(0)
    features = torch.randn(12, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 4])  # class 4: an anchor without positives
    got = losses.supcon_loss(features, labels, tau)
    assert float(got) == pytest.approx(supcon_reference(features, labels, tau), rel=1e-10)


def test_supcon_is_scale_invariant_and_stable_at_small_temperature():
    torch.manual_seed(1)
    features = torch.randn(16, 8)
    labels = torch.randint(0, 3, (16,))
    torch.testing.assert_close(losses.supcon_loss(1e3 * features, labels), losses.supcon_loss(features, labels))
    # tau = 1e-3 puts exp(1000) in a naive implementation; log-sum-exp keeps it finite.
    tiny = losses.supcon_loss(features.double(), labels, 1e-3)
    assert torch.isfinite(tiny)
    assert float(tiny) == pytest.approx(supcon_reference(features.double(), labels, 1e-3), rel=1e-8)


def test_supcon_perfectly_clustered_and_no_positive_cases():
    # Two classes collapsed onto opposite unit vectors, 2 samples each: every anchor's denominator is
    # exp(1/tau) + 2 exp(-1/tau), its positive exp(1/tau).
    tau = 0.5
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * math.exp(-1 / tau)))
    assert float(losses.supcon_loss(features, labels, tau)) == pytest.approx(expected, rel=1e-6)

    distinct = torch.randn(4, 3, requires_grad=True)
    loss = losses.supcon_loss(distinct, torch.arange(4))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(distinct.grad, torch.zeros(4, 3))


def test_supcon_gradient_finite_with_zero_feature():
    features = torch.randn(6, 4)
    features[2] = 0.0
    features.requires_grad_(True)
    losses.supcon_loss(features, torch.tensor([0, 0, 1, 1, 0, 1])).backward()
    assert torch.isfinite(features.grad).all()


# ----------------------------------------------------------------------------------- ArcFace / CosFace


def test_arcface_target_and_non_target_logits_by_hand():
    m, s = 0.3, 10.0
    cos = torch.tensor([[0.8, 0.1, -0.2], [0.3, -0.5, 0.9], [-0.99, 0.0, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 0])
    got = losses.arcface_logits(cos, labels, m, s)
    expected = s * cos.clone()
    expected[0, 0] = s * math.cos(math.acos(0.8) + m)
    expected[1, 2] = s * math.cos(math.acos(0.9) + m)
    # theta = acos(-0.99) = 3.0 rad, theta + m > pi: the threshold branch c - m sin m.
    assert math.cos(math.pi - m) >= -0.99
    expected[2, 0] = s * (-0.99 - m * math.sin(m))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_arcface_easy_margin_and_zero_margin():
    cos = torch.tensor([[-0.4, 0.2], [0.6, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    easy = losses.arcface_logits(cos, labels, 0.5, 2.0, easy_margin=True)
    assert float(easy[0, 0]) == pytest.approx(2.0 * -0.4)  # cos <= 0: no margin
    assert float(easy[1, 0]) == pytest.approx(2.0 * math.cos(math.acos(0.6) + 0.5))
    torch.testing.assert_close(losses.arcface_logits(cos, labels, 0.0, 3.0), 3.0 * cos, rtol=0, atol=1e-5)


def test_cosface_logits_by_hand():
    cos = torch.tensor([[0.8, 0.1, -0.2], [0.3, -0.5, 0.9]])
    got = losses.cosface_logits(cos, torch.tensor([1, 2]), 0.25, 64.0)
    expected = 64.0 * torch.tensor([[0.8, 0.1 - 0.25, -0.2], [0.3, -0.5, 0.9 - 0.25]])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_margin_gradients_finite_at_plus_minus_one(easy_margin):
    cos = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    for logits in (losses.arcface_logits(cos, labels, 0.5, 64.0, easy_margin=easy_margin),
                   losses.cosface_logits(cos, labels, 0.25, 64.0)):
        cos.grad = None
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        assert torch.isfinite(logits).all() and torch.isfinite(loss)
        assert torch.isfinite(cos.grad).all()


def test_arcface_gradient_finite_through_cosine_head_when_z_is_a_class_direction():
    head = EuclideanHead(3, 2, classifier="cosine")
    z = head.classifier.weight.detach()[:1].clone().requires_grad_(True)  # cos = 1 with class 0
    logits = losses.arcface_logits(head(z).logits, torch.tensor([0]), 0.5, 64.0)
    F.cross_entropy(logits, torch.tensor([0])).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(head.classifier.weight.grad).all()


def test_margin_argument_checks():
    cos = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        losses.arcface_logits(cos, torch.tensor([0, 3]), 0.1, 1.0)
    with pytest.raises(ValueError, match="integer"):
        losses.cosface_logits(cos, torch.tensor([0.0, 1.0]), 0.1, 1.0)
    with pytest.raises(ValueError, match="pi/2"):
        losses.arcface_logits(cos, torch.tensor([0, 1]), 2.0, 1.0)


# -------------------------------------------------------------------------------------------- schedules


def test_margin_schedules_follow_the_paper_ramps():
    arc = losses.MarginSchedule.arcface(epochs=5)
    assert arc.at(0) == (pytest.approx(0.1), pytest.approx(16.0))
    assert arc.at(2) == (pytest.approx(0.3), pytest.approx(40.0))
    assert arc.at(4) == (pytest.approx(0.5), pytest.approx(64.0))
    assert arc.at(100) == arc.at(4) and arc.at(-3) == arc.at(0)
    cosf = losses.MarginSchedule.cosface(epochs=11)
    assert cosf.at(0) == (pytest.approx(0.05), pytest.approx(16.0))
    assert cosf.at(5) == (pytest.approx(0.15), pytest.approx(40.0))
    assert cosf.at(10) == (pytest.approx(0.25), pytest.approx(64.0))
    assert losses.MarginSchedule(0.0, 1.0, 1.0, 2.0, epochs=1).at(0) == (1.0, 2.0)
    with pytest.raises(ValueError, match="epochs"):
        losses.MarginSchedule.arcface(epochs=0)


# -------------------------------------------------------------------------------------------- Objective

EXPECTED_PARTS = {
    "NoPen": {"ce"}, "LinPen": {"ce"}, "NonlinPen": {"ce"}, "LPC": {"ce", "compression"},
    "LPC-Narrow": {"ce", "compression"}, "LPC-Wide": {"ce", "compression"},
    "LPC-NoPen": {"ce", "compression"}, "LPC-SCL": {"ce", "compression", "supcon"},
    "SCL": {"ce", "supcon"}, "ArcFace": {"ce"}, "CosFace": {"ce"},
}


@pytest.mark.parametrize("row_name", list(ROWS))
def test_objective_parts_sum_to_loss_for_every_row(row_name):
    torch.manual_seed(0)
    row = get_row(row_name)
    head = build_head(row, 16, 4)
    h = torch.randn(10, 16, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    out = head(h)
    objective = losses.Objective(row, epochs=5)
    loss, parts = objective(out, labels, gamma=0.3, epoch=2)
    assert set(parts) == EXPECTED_PARTS[row_name]
    assert all(not p.requires_grad and p.dim() == 0 for p in parts.values())
    torch.testing.assert_close(sum(parts.values()), loss.detach())

    # Each term against its own closed form.
    if row.classifier == "linear":
        ce = F.cross_entropy(out.logits, labels)
        assert objective.margin_at(2) is None
    else:
        margin, scale = objective.margin_at(2)
        expected_margin = {"arcface": 0.3, "cosface": 0.15}[row.classifier]  # halfway through the ramp
        assert (margin, scale) == (pytest.approx(expected_margin), pytest.approx(40.0))
        fn = losses.arcface_logits if row.classifier == "arcface" else losses.cosface_logits
        ce = F.cross_entropy(fn(out.logits, labels, margin, scale), labels)
    torch.testing.assert_close(parts["ce"], ce.detach())
    if "compression" in parts:
        torch.testing.assert_close(parts["compression"], 0.3 * out.latents.detach().pow(2).sum(1).mean())
    if "supcon" in parts:
        torch.testing.assert_close(parts["supcon"], losses.supcon_loss(out.latents, labels, 0.05).detach())
    loss.backward()
    assert torch.isfinite(h.grad).all()


def test_objective_weights_and_lpc_scl_combination():
    torch.manual_seed(0)
    out = build_head("LPC-SCL", 8, 3)(torch.randn(9, 8))
    labels = torch.tensor([0, 1, 2] * 3)
    loss, parts = losses.Objective("LPC-SCL", supcon_weight=0.5, temperature=0.2)(out, labels, gamma=2.0, epoch=0)
    expected = (F.cross_entropy(out.logits, labels) + 2.0 * out.energy.mean()
                + 0.5 * losses.supcon_loss(out.latents, labels, 0.2))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(parts["supcon"], 0.5 * losses.supcon_loss(out.latents, labels, 0.2).detach())


def test_objective_gamma_ignored_without_penalty_and_schedule_override():
    out = build_head("NoPen", 4, 2)(torch.randn(3, 4))
    labels = torch.tensor([0, 1, 1])
    a, _ = losses.Objective("NoPen")(out, labels, gamma=0.0, epoch=0)
    b, _ = losses.Objective("NoPen")(out, labels, gamma=1e6, epoch=7)
    torch.testing.assert_close(a, b)

    cos_out = build_head("CosFace", 4, 2)(torch.randn(3, 4))
    custom = losses.MarginSchedule(0.4, 0.4, 8.0, 8.0, epochs=3)
    loss, _ = losses.Objective("CosFace", margin_schedule=custom)(cos_out, labels, gamma=0.0, epoch=1)
    torch.testing.assert_close(loss, F.cross_entropy(losses.cosface_logits(cos_out.logits, labels, 0.4, 8.0), labels))


def test_objective_errors():
    with pytest.raises(ValueError, match="needs epochs"):
        losses.Objective("ArcFace")
    with pytest.raises(ValueError, match="margin_schedule applies only"):
        losses.Objective("LPC", margin_schedule=losses.MarginSchedule.arcface(3))
    bad = HeadOutput(torch.tensor([[3.0, -2.0]]), torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="cosine classifier"):
        losses.Objective("ArcFace", epochs=3)(bad, torch.tensor([0]), gamma=0.0, epoch=0)
