"""The loss terms' boundaries, defaults and refusals, pinned against their formulas.

Each argument check is exercised on both sides of its threshold, each error message is matched whole, and
the numerical details (the clamp of ArcFace's target cosine, the threshold branch, the normalisation
epsilon of SupCon) are compared with the closed forms in float64.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from lpc_geom.ablation import get_row
from lpc_geom.losses import (
    ARCFACE_MARGINS,
    COSFACE_MARGINS,
    MARGIN_SCALES,
    MarginSchedule,
    Objective,
    arcface_logits,
    compression_term,
    cosface_logits,
    supcon_loss,
)
from lpc_geom.models import HeadOutput, build_head


def exactly(message: str) -> str:
    """A ``match=`` pattern that accepts only this whole message."""
    return f"^{re.escape(message)}$"


def f64(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- compression


def test_compression_term_at_gamma_zero_and_its_refusals():
    energy = f64([1.0, 2.0, 6.0])
    assert float(compression_term(energy, 0.0)) == 0.0  # the boundary is allowed
    assert float(compression_term(energy, 0.5)) == pytest.approx(0.5 * 3.0, rel=1e-15)
    with pytest.raises(ValueError, match=exactly("gamma must be non-negative, got -0.25")):
        compression_term(energy, -0.25)
    with pytest.raises(ValueError, match=exactly("energy must have shape (N,), got (3, 1)")):
        compression_term(energy[:, None], 1.0)


# ------------------------------------------------------------------------------------------------ labels


def test_label_checks_name_the_shape_dtype_and_range():
    cos = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=exactly("labels must have shape (2,), got (2, 1)")):
        cosface_logits(cos, torch.tensor([[0], [1]]), 0.1, 1.0)
    with pytest.raises(ValueError, match=exactly("labels must have shape (2,), got (3,)")):
        cosface_logits(cos, torch.tensor([0, 1, 2]), 0.1, 1.0)
    with pytest.raises(ValueError, match=exactly("labels must be an integer tensor, got torch.float32")):
        cosface_logits(cos, torch.tensor([0.0, 1.0]), 0.1, 1.0)
    with pytest.raises(ValueError, match=exactly("labels must lie in [0, 3), got range [-1, 2]")):
        cosface_logits(cos, torch.tensor([-1, 2]), 0.1, 1.0)
    with pytest.raises(ValueError, match=exactly("labels must lie in [0, 3), got range [0, 3]")):
        arcface_logits(cos, torch.tensor([0, 3]), 0.1, 1.0)
    with pytest.raises(ValueError, match=exactly("cos must have shape (N, K), got (3,)")):
        cosface_logits(torch.zeros(3), torch.tensor([0, 1, 2]), 0.1, 1.0)
    # Every integer dtype is accepted, and the classes 0 and K - 1 are inside the range.
    expected = torch.tensor([[0.0, 0.0, -0.5], [-0.5, 0.0, 0.0]])
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        got = cosface_logits(cos, torch.tensor([2, 0], dtype=dtype), 0.25, 2.0)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_an_empty_batch_passes_the_label_checks():
    empty = cosface_logits(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 0.1, 1.0)
    assert empty.shape == (0, 3)
    assert arcface_logits(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 0.1, 1.0).shape == (0, 3)


# ------------------------------------------------------------------------------------------------ supcon


def test_supcon_refusals_and_the_temperature_boundary():
    features, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=exactly("temperature must be positive, got 0.0")):
        supcon_loss(features, labels, 0.0)
    with pytest.raises(ValueError, match=exactly("features must have shape (N, d), got (4,)")):
        supcon_loss(features[:, 0], labels)
    with pytest.raises(ValueError, match=exactly("labels must have shape (4,), got (3,)")):
        supcon_loss(features, labels[:3])


def supcon_from_directions(u: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Khosla et al.'s L^sup_out from given (normalised) rows ``u``, anchor by anchor."""
    sim = (u @ u.T) / tau
    n, terms = len(labels), []
    for i in range(n):
        others = [a for a in range(n) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if pos:
            log_den = torch.logsumexp(sim[i, others], dim=0)
            terms.append(-sum(float(sim[i, p] - log_den) for p in pos) / len(pos))
    return sum(terms) / len(terms)


def test_supcon_normalises_by_the_norm_floored_at_1e_8():
    """Each latent enters as ``z / max(||z||, 1e-8)``: a unit vector above the floor, shorter below it."""
    g = torch.Generator().manual_seed(3)
    features = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    for norm in (1e-8 * (1 + 5e-9), 1e-10, 0.0):
        x = features.clone()
        x[1] *= norm / float(features[1].norm())
        u = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
        assert float(supcon_loss(x, labels, 0.3)) == pytest.approx(supcon_from_directions(u, labels, 0.3),
                                                                 rel=1e-12), norm
    just_above = features.clone()
    just_above[1] *= 1e-8 * (1 + 5e-9) / float(features[1].norm())
    torch.testing.assert_close(supcon_loss(just_above, labels, 0.3), supcon_loss(features, labels, 0.3),
                               rtol=1e-12, atol=0)


def test_supcon_default_temperature_is_the_papers():
    g = torch.Generator().manual_seed(4)
    features, labels = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1] * 4)
    assert float(supcon_loss(features, labels)) == float(supcon_loss(features, labels, 0.05))
    assert float(supcon_loss(features, labels)) != float(supcon_loss(features, labels, 0.06))


# ----------------------------------------------------------------------------------------------- ArcFace


def arcface_target(c: float, m: float, *, eps: float = 1e-6, easy: bool = False) -> float:
    """The closed form of the target logit's cosine, before the scale."""
    c = min(max(c, -1.0 + eps), 1.0 - eps)
    phi = c * math.cos(m) - math.sqrt(1.0 - c * c) * math.sin(m)
    if easy:
        return phi if c > 0 else c
    return phi if c > math.cos(math.pi - m) else c - m * math.sin(m)


def test_arcface_margin_range_is_closed():
    cos, labels = f64([[0.5, 0.1]]), torch.tensor([0])
    got = arcface_logits(cos, labels, math.pi / 2, 3.0)  # the upper end is allowed
    assert float(got[0, 0]) == pytest.approx(3.0 * arcface_target(0.5, math.pi / 2), rel=1e-12)
    torch.testing.assert_close(arcface_logits(cos, labels, 0.0, 3.0)[0, 1], torch.tensor(0.3, dtype=torch.float64))
    for bad in (-1e-9, math.pi / 2 + 1e-9):
        with pytest.raises(ValueError, match=exactly(f"ArcFace margin must lie in [0, pi/2], got {bad}")):
            arcface_logits(cos, labels, bad, 3.0)


def test_arcface_clamps_only_the_target_cosine_by_eps():
    m, s = 0.4, 5.0
    cos = f64([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    labels = torch.tensor([0, 0])
    got = arcface_logits(cos, labels, m, s)
    # Target cosines +-1 are clamped to +-(1 - 1e-6); the others keep their exact values.
    assert float(got[0, 0]) == pytest.approx(s * arcface_target(1.0, m), rel=1e-13, abs=0)
    assert float(got[1, 0]) == pytest.approx(s * arcface_target(-1.0, m), rel=1e-13, abs=0)
    assert got[0, 1:].tolist() == [-s, s] and got[1, 1:].tolist() == [s, -s]
    custom = arcface_logits(cos, labels, m, s, eps=0.01)
    assert float(custom[0, 0]) == pytest.approx(s * arcface_target(1.0, m, eps=0.01), rel=1e-13)
    assert float(custom[1, 0]) == pytest.approx(s * arcface_target(-1.0, m, eps=0.01), rel=1e-13)


def test_arcface_threshold_and_easy_margin_boundaries():
    m, s = 0.5, 2.0
    edge = math.cos(math.pi - m)  # theta + m = pi exactly: the threshold branch takes over
    cos = f64([[edge, 0.0], [0.0, 0.2], [edge + 1e-3, 0.1]])
    labels = torch.tensor([0, 0, 0])
    got = arcface_logits(cos, labels, m, s)
    assert float(got[0, 0]) == pytest.approx(s * (edge - m * math.sin(m)), rel=1e-13)
    assert float(got[1, 0]) == pytest.approx(s * arcface_target(0.0, m), rel=1e-13)
    assert float(got[2, 0]) == pytest.approx(s * arcface_target(edge + 1e-3, m), rel=1e-13)
    easy = arcface_logits(cos, labels, m, s, easy_margin=True)
    assert float(easy[1, 0]) == 0.0  # cos = 0 is not > 0: no margin
    assert float(easy[0, 0]) == pytest.approx(s * edge, rel=1e-13)
    small = f64([[1e-3, 0.0]])
    assert float(arcface_logits(small, torch.tensor([0]), m, s, easy_margin=True)[0, 0]) == pytest.approx(
        s * arcface_target(1e-3, m, easy=True), rel=1e-13)


# ----------------------------------------------------------------------------------------------- CosFace


def test_cosface_margin_boundary_and_exactness():
    cos, labels = f64([[0.3, -0.7]]), torch.tensor([1])
    assert cosface_logits(cos, labels, 0.0, 4.0).tolist() == [[4.0 * 0.3, 4.0 * -0.7]]
    # In the cosines' dtype: 0.1 is not a float32 number, and half cosines give half logits.
    assert cosface_logits(cos, labels, 0.1, 4.0).tolist() == [[4.0 * 0.3, 4.0 * (-0.7 - 0.1)]]
    assert cosface_logits(cos.half(), labels, 0.1, 4.0).dtype == torch.float16
    with pytest.raises(ValueError, match=exactly("CosFace margin must be non-negative, got -0.01")):
        cosface_logits(cos, labels, -0.01, 4.0)


# --------------------------------------------------------------------------------------------- schedules


def test_the_papers_ramps_and_the_schedule_refusals():
    assert (ARCFACE_MARGINS, COSFACE_MARGINS, MARGIN_SCALES) == ((0.1, 0.5), (0.05, 0.25), (16.0, 64.0))
    assert MarginSchedule.arcface(7) == MarginSchedule(0.1, 0.5, 16.0, 64.0, 7)
    assert MarginSchedule.cosface(7) == MarginSchedule(0.05, 0.25, 16.0, 64.0, 7)
    one = MarginSchedule(0.2, 0.4, 8.0, 32.0, epochs=1)
    assert one.at(0) == one.at(5) == (0.4, 32.0)  # a one-epoch ramp uses the end values
    assert MarginSchedule(0.0, 0.0, 1.0, 1.0, 2).at(1) == (0.0, 1.0)  # zero margins are allowed
    ramp = MarginSchedule(0.0, 1.0, 1.0, 3.0, epochs=5)
    assert [ramp.at(e) for e in (-1, 0, 1, 3, 4, 9)] == [(0.0, 1.0), (0.0, 1.0), (0.25, 1.5), (0.75, 2.5),
                                                         (1.0, 3.0), (1.0, 3.0)]
    with pytest.raises(ValueError, match=exactly("epochs must be at least 1, got 0")):
        MarginSchedule(0.1, 0.2, 1.0, 2.0, epochs=0)
    for margins in ((-0.1, 0.2), (0.2, -0.1)):
        with pytest.raises(ValueError, match=exactly("margins must be non-negative")):
            MarginSchedule(*margins, 1.0, 2.0, epochs=3)
    for scales in ((0.0, 2.0), (2.0, 0.0)):
        with pytest.raises(ValueError, match=exactly("scales must be positive")):
            MarginSchedule(0.1, 0.2, *scales, epochs=3)


# --------------------------------------------------------------------------------------------- Objective


def cosines(rows) -> HeadOutput:
    n = len(rows)
    return HeadOutput(f64(rows), torch.zeros(n, 2, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))


def test_objective_argument_checks_and_their_boundaries():
    with pytest.raises(ValueError, match=exactly("supcon_weight must be >= 0 and temperature > 0, got -0.5 and 0.05")):
        Objective("SCL", supcon_weight=-0.5)
    with pytest.raises(ValueError, match=exactly("supcon_weight must be >= 0 and temperature > 0, got 1.0 and 0.0")):
        Objective("SCL", temperature=0.0)
    with pytest.raises(ValueError,
                       match=exactly("row ArcFace needs epochs (or a margin_schedule) for its margin ramp")):
        Objective("ArcFace")
    with pytest.raises(ValueError, match=exactly(
            "row LPC has a linear classifier; margin_schedule applies only to the ArcFace and CosFace rows")):
        Objective("LPC", margin_schedule=MarginSchedule.cosface(3))
    out = build_head("SCL", 6, 3)(torch.randn(6, 6))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, parts = Objective("SCL", supcon_weight=0.0)(out, labels, gamma=0.0, epoch=0)  # weight 0 is allowed
    assert float(parts["supcon"]) == 0.0
    torch.testing.assert_close(loss, F.cross_entropy(out.logits, labels))
    row = get_row("CosFace")
    assert Objective(row, epochs=4).margin_schedule == MarginSchedule.cosface(4)  # a Row works as well as its name
    assert Objective("ArcFace", epochs=4).margin_schedule == MarginSchedule.arcface(4)
    assert Objective("LPC").margin_schedule is None and Objective("LPC").margin_at(3) is None


def test_objective_defaults():
    objective = Objective("LPC-SCL")
    assert (objective.supcon_weight, objective.temperature, objective.easy_margin) == (1.0, 0.05, False)


def test_objective_passes_easy_margin_and_the_scheduled_margin_to_arcface():
    out = cosines([[-0.3, 0.2], [0.6, -0.1]])
    labels = torch.tensor([0, 0])
    schedule = MarginSchedule(0.2, 0.4, 10.0, 20.0, epochs=3)
    for easy in (False, True):
        loss, parts = Objective("ArcFace", margin_schedule=schedule, easy_margin=easy)(out, labels, gamma=5.0,
                                                                                     epoch=1)
        expected = F.cross_entropy(arcface_logits(out.logits, labels, 0.3, 15.0, easy_margin=easy), labels)
        torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
        assert set(parts) == {"ce"}
    plain = Objective("ArcFace", margin_schedule=schedule)(out, labels, gamma=0.0, epoch=1)[0]
    easy = Objective("ArcFace", margin_schedule=schedule, easy_margin=True)(out, labels, gamma=0.0, epoch=1)[0]
    assert float(plain) != float(easy)  # the first sample's target cosine is negative


def test_objective_checks_the_cosine_range_on_the_first_batch_only():
    """The range check synchronises with the device, so it runs once; logits of 1 + 1e-5 still pass."""
    labels = torch.tensor([0])
    edge = torch.tensor([[1.0 + 1e-5, 0.0]], dtype=torch.float64)
    objective = Objective("CosFace", epochs=3)
    objective(HeadOutput(edge, torch.zeros(1, 2), torch.zeros(1)), labels, gamma=0.0, epoch=0)
    assert objective._checked_cosines
    objective(cosines([[3.0, 0.0]]), labels, gamma=0.0, epoch=0)  # not checked again
    fresh = Objective("CosFace", epochs=3)
    over = torch.tensor([[1.0 + 2e-5, -0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match=exactly(
            "row CosFace needs cosines in [-1, 1] from a cosine classifier; got logits up to 1")):
        fresh(HeadOutput(over, torch.zeros(1, 2), torch.zeros(1)), labels, gamma=0.0, epoch=0)
    assert not fresh._checked_cosines
    with pytest.raises(ValueError, match=exactly(
            "row ArcFace needs cosines in [-1, 1] from a cosine classifier; got logits up to 3")):
        Objective("ArcFace", epochs=3)(cosines([[-3.0, 0.5]]), labels, gamma=0.0, epoch=0)
