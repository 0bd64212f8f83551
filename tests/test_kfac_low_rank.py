"""K-FAC cost paths: low-rank preconditioning from the batch factors (equal to the dense product, with
its fallbacks) and Monte-Carlo statistics on a subsample of the batch."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.models.base import Classifier, HeadOutput
from lpc_geom.optim.kfac import KFAC

D64 = torch.float64


def _wide(d_in=6, width=24, k=3, inplace=True, bias=True):
    return nn.Sequential(
        nn.Linear(d_in, width, bias=bias), nn.ReLU(inplace=inplace), nn.Linear(width, width, bias=bias),
        nn.ReLU(inplace=inplace), nn.Linear(width, k),
    ).to(D64)


def _pair(make, **kwargs):
    """The same model twice, one K-FAC with the low-rank path and one without."""
    ref = make()
    other = make()
    other.load_state_dict(ref.state_dict())
    kw = {"fisher": "exact", "damping": 1e-2, "kl_clip": None, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (ref, KFAC(ref, low_rank=True, **kw)), (other, KFAC(other, low_rank=False, **kw))


def _step(model, pc, x, y, loss_fn=None, chunks=1, after_backward=None):
    model.zero_grad(set_to_none=True)
    for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
        out = model(xc)
        logits = out.logits if isinstance(out, HeadOutput) else out
        pc.update_statistics(logits, yc)
        loss = F.cross_entropy(logits, yc) if loss_fn is None else loss_fn(model, out, yc)
        (loss / chunks).backward()
    if after_backward is not None:
        after_backward(model)
    pc.step()
    return [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-13)


def test_low_rank_equals_dense_on_the_wide_layer_over_several_steps():
    torch.manual_seed(0)
    (m1, lo), (m2, de) = _pair(_wide, update_freq=2, lr=0.1)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (m1, m2)]
    for step in range(4):
        x, y = torch.randn(5, 6, dtype=D64), torch.randint(0, 3, (5,))
        g1, g2 = _step(m1, lo, x, y), _step(m2, de, x, y)
        _assert_same(g1, g2)
        # 5 rows: cheaper than dense for the 24 x 7 and 24 x 25 gradients (limits 6 and 16 rows), not 3 x 25 (2).
        assert lo.last_low_rank == ("0", "2"), step
        assert de.last_low_rank == ()
        for opt in opts:
            opt.step()


def test_low_rank_keeps_the_compression_gradient_and_follows_accumulation():
    torch.manual_seed(1)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(24, 20)
            self.classifier = nn.Linear(20, 3)

        def forward(self, h):
            z = self.proj(h)
            return HeadOutput(self.classifier(z), z, (z**2).sum(-1))

    def make():
        backbone = nn.Sequential(nn.Linear(6, 24), nn.ReLU(inplace=True))
        backbone.out_dim = 24
        return Classifier(backbone, Head()).to(D64)

    def objective(model, out, y):
        return F.cross_entropy(out.logits, y) + 3.0 * out.energy.mean()

    (m1, lo), (m2, de) = _pair(make)
    x, y = torch.randn(6, 6, dtype=D64), torch.randint(0, 3, (6,))
    _assert_same(_step(m1, lo, x, y, objective, chunks=2), _step(m2, de, x, y, objective, chunks=2))
    assert lo.last_low_rank == ("backbone.0", "head.proj")  # 2 x 3 rows; limits 6 (24 x 7), 14 (20 x 25)


def _l2_on_weight(model, out, y):
    return F.cross_entropy(out, y) + 0.5 * (model[2].weight ** 2).sum()


def _clip(model):
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)


@pytest.mark.parametrize(
    ("loss_fn", "after_backward"),
    [(_l2_on_weight, None), (None, _clip)],
    ids=["penalty-on-the-weight", "gradient-clipping"],
)
def test_grad_that_is_not_the_batch_product_is_preconditioned_densely(loss_fn, after_backward):
    torch.manual_seed(2)
    (m1, lo), (m2, de) = _pair(_wide)
    x, y = torch.randn(5, 6, dtype=D64), torch.randint(0, 3, (5,))
    g1 = _step(m1, lo, x, y, loss_fn, after_backward=after_backward)
    g2 = _step(m2, de, x, y, loss_fn, after_backward=after_backward)
    # The penalty touches layer 2 only; clipping rescales every .grad.
    assert lo.last_low_rank == (("0",) if after_backward is None else ())
    _assert_same(g1, g2)


def test_grad_left_over_from_an_earlier_step_is_seen():
    torch.manual_seed(3)
    (m1, lo), (m2, de) = _pair(_wide)
    x, y = torch.randn(5, 6, dtype=D64), torch.randint(0, 3, (5,))
    grads = []
    for model, pc in ((m1, lo), (m2, de)):
        for xb, yb in ((x, y), (x[:4], y[:4])):  # no zero_grad between the steps: .grad keeps step 1
            out = model(xb)
            pc.update_statistics(out, yb)
            F.cross_entropy(out, yb).backward()
            pc.step()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert lo.last_low_rank == ()
    _assert_same(*grads)


def test_eigen_mode_and_large_batches_stay_dense():
    torch.manual_seed(4)
    (m1, lo), _ = _pair(_wide, damping_mode="eigen")
    _step(m1, lo, torch.randn(5, 6, dtype=D64), torch.randint(0, 3, (5,)))
    assert lo.last_low_rank == ()
    (m2, lo2), _ = _pair(_wide)
    _step(m2, lo2, torch.randn(17, 6, dtype=D64), torch.randint(0, 3, (17,)))
    assert lo2.last_low_rank == ()


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(4, 40),
    rows=st.integers(1, 12),
    chunks=st.sampled_from([1, 2]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_low_rank_agrees_with_dense_whenever_it_is_used(width, rows, chunks, bias, seed):
    torch.manual_seed(seed)
    (m1, lo), (m2, de) = _pair(lambda: _wide(d_in=3, width=width, bias=bias))
    n = rows * chunks
    x, y = torch.randn(n, 3, dtype=D64), torch.randint(0, 3, (n,))
    _assert_same(_step(m1, lo, x, y, chunks=chunks), _step(m2, de, x, y, chunks=chunks))
    d_bar = width + int(bias)
    limit = (width * d_bar * (width + d_bar) - 1) // (width * width + d_bar * d_bar + width * d_bar)
    assert ("2" in lo.last_low_rank) == (n <= limit)


@pytest.mark.parametrize("dims", [1, 2])
def test_convolution_rows_are_positions_and_low_rank_equals_dense(dims):
    """A convolution's batch gradient has ``N L`` rows (examples times output positions), whatever its
    channel count: the 16 x 7 gradient of a 3-tap convolution of 2 channels (limit 6 rows) is preconditioned from its
    batch factors at 2 examples times 2 positions, densely at 2 times 4, and equals the dense product."""
    torch.manual_seed(7)
    for length, low_rank in ((4, True), (6, False)):
        conv = nn.Conv1d(2, 16, 3) if dims == 1 else nn.Conv2d(2, 16, (1, 3))
        ref = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(16 * (length - 2), 3)).to(D64)
        other = copy.deepcopy(ref)
        kw = {"fisher": "exact", "damping": 1e-2, "kl_clip": None}
        lo, de = KFAC(ref, low_rank=True, **kw), KFAC(other, low_rank=False, **kw)
        x = torch.randn(2, 2, length, dtype=D64) if dims == 1 else torch.randn(2, 2, 1, length, dtype=D64)
        y = torch.randint(0, 3, (2,))
        _assert_same(_step(ref, lo, x, y), _step(other, de, x, y))
        assert ("0" in lo.last_low_rank) == low_rank, length
        assert de.last_low_rank == ()


# --------------------------------------------------------------------------- subsampled MC statistics
def test_mc_statistics_on_a_subset_are_the_statistics_of_that_subset():
    torch.manual_seed(5)
    model = _wide(width=8)
    x = torch.randn(12, 6, dtype=D64)
    pc = KFAC(model, fisher="mc", kl_clip=None, stats_examples=5, generator=torch.Generator().manual_seed(3))
    out = model(x)
    pc.update_statistics(out)
    pc.step()
    # Reproduce the draws: labels for the whole batch first, then the subset.
    gen = torch.Generator().manual_seed(3)
    drawn = torch.multinomial(torch.softmax(out.detach(), -1), 1, replacement=True, generator=gen)[:, 0]
    subset = torch.randperm(12, generator=gen)[:5].sort().values
    ref = KFAC(model, fisher="empirical", kl_clip=None)
    sub_out = model(x[subset])
    ref.update_statistics(sub_out, drawn[subset])
    ref.step()
    for name in ("0", "2", "4"):
        for f, f_ref in zip(pc.factors(name), ref.factors(name), strict=True):
            torch.testing.assert_close(f, f_ref, rtol=1e-12, atol=1e-14)


def test_subset_as_large_as_the_batch_changes_nothing():
    torch.manual_seed(6)
    model = _wide(width=8)
    x = torch.randn(7, 6, dtype=D64)
    out = model(x)
    factors = []
    for examples in (None, 7, 50):
        pc = KFAC(model, fisher="mc", kl_clip=None, stats_examples=examples, generator=torch.Generator().manual_seed(1))
        out = model(x)
        pc.update_statistics(out)
        pc.step()
        factors.append([pc.factors(n) for n in pc.layers])
        pc.remove()
    for other in factors[1:]:
        for (a0, g0), (a1, g1) in zip(factors[0], other, strict=True):
            assert torch.equal(a0, a1) and torch.equal(g0, g1)


@pytest.mark.parametrize(
    ("fisher", "examples"), [("exact", 4), ("empirical", 4), ("mc", 0), ("mc", True)]
)
def test_stats_examples_is_refused_where_it_would_change_a_deterministic_fisher(fisher, examples):
    with pytest.raises(ValueError, match="stats_examples"):
        KFAC(nn.Linear(3, 2), fisher=fisher, kl_clip=None, stats_examples=examples)
