"""K-FAC's cheaper products against dense truth: second moments formed on their upper triangle only (mirrored
when the factors are read), rows padded to aligned strides, and the preconditioned gradient of wide layers."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.optim._kfac_base import _ALIGN, _aligned_copy, _aligned_empty, _LayerState
from lpc_geom.optim.kfac import _PANEL, KFAC, _gram_upper

D64 = torch.float64


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 2 * _PANEL + 150), rows=st.integers(1, 40), beta=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**16))
def test_upper_triangle_product_equals_the_full_one_on_and_above_the_diagonal(d, rows, beta, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=gen, dtype=D64)
    before = torch.randn(d, d, generator=gen, dtype=D64)
    out = before.clone()
    _gram_upper(out, x, beta, 0.7)
    truth = 0.7 * x.T @ x + (beta * before if beta else 0.0)
    upper = torch.ones(d, d, dtype=torch.bool).triu()
    torch.testing.assert_close(out[upper], truth[upper], rtol=1e-12, atol=1e-12)
    if d >= 2 * _PANEL:  # panels: the blocks left of each diagonal block are not formed at all
        r, c = torch.arange(d)[:, None], torch.arange(d)[None, :]
        untouched = c < (r // _PANEL) * _PANEL
        assert untouched.any() and torch.equal(out[untouched], before[untouched])


def test_aligned_matrices_start_every_row_on_a_64_byte_boundary():
    like = torch.zeros(1)
    m = _aligned_empty((7, 33), like)
    assert m.shape == (7, 33) and m.stride(0) % _ALIGN == 0 and m.stride(0) >= 33
    assert m.data_ptr() % 64 == 0
    assert _aligned_empty((3, 2 * _ALIGN), like).is_contiguous()  # already aligned: no padding
    src = torch.randn(5, 21, dtype=D64)
    copy = _aligned_copy(src)
    assert torch.equal(copy, src) and copy.stride(0) % _ALIGN == 0 and copy.data_ptr() != src.data_ptr()


def test_mirrored_factor_is_the_symmetric_part_and_stale_lower_triangles_are_never_read():
    state = _LayerState()
    full = torch.tensor([[2.0, 0.7], [0.3, 1.0]], dtype=D64)  # a loaded, slightly asymmetric factor
    state.ema["A"] = full.clone()
    assert torch.equal(state.full("A"), full)  # not marked: returned as it is
    state.mark_upper_only("A")
    torch.testing.assert_close(state.ema["A"], 0.5 * (full + full.T), rtol=0, atol=0)
    state.ema["A"][1, 0] = float("nan")  # a stale lower triangle
    state.ema["A"][0, 1] = 0.25
    assert torch.equal(state.full("A"), torch.tensor([[2.0, 0.25], [0.25, 1.0]], dtype=D64))
    assert "A" not in state.upper_only


def _wide_layer(d_in, d_out, bias=True):
    torch.manual_seed(d_in + d_out)
    return nn.Linear(d_in, d_out, bias=bias).to(D64)


@pytest.mark.parametrize(("d_in", "d_out", "rows", "chunks", "bias"), [
    (2 * _PANEL + 40, 2 * _PANEL + 20, 12, 1, True),  # both factors wider than a panel pair, deferred products
    (2 * _PANEL + 40, 2 * _PANEL + 20, 12, 2, False),  # micro-batches pooled into the pending mean first
    (2 * _PANEL + 3, 2 * _PANEL + 1, 2 * _PANEL + 30, 1, True),  # more rows than the factor: moving average by lerp
])
def test_wide_factors_equal_their_definitions_step_after_step(d_in, d_out, rows, chunks, bias):
    """``A_t = beta A_{t-1} + (1 - beta) abar^T abar / N``, ``G_t = beta G_{t-1} + (1 - beta) g^T g / N`` (empirical
    Fisher, ``g = softmax(s) - e_y``) to 1e-12 in float64, exactly symmetric, read in the middle of the run (which
    mirrors the triangles) or not, and through the saved state."""
    lin = _wide_layer(d_in, d_out, bias)
    beta = 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc = KFAC(lin, fisher="empirical", ema_decay=beta, kl_clip=None, update_freq=2)
    A_ref = G_ref = None
    for t in range(4):
        x, y = torch.randn(rows, d_in, dtype=D64), torch.randint(0, d_out, (rows,))
        lin.zero_grad()
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            out = lin(xc)
            pc.update_statistics(out, yc)
            (F.cross_entropy(out, yc) * len(yc) / rows).backward()
        pc.step()
        abar = torch.cat([x, torch.ones(rows, 1, dtype=D64)], 1) if bias else x
        g = torch.softmax(lin(x), 1).detach() - F.one_hot(y, d_out).to(D64)
        A_new, G_new = abar.T @ abar / rows, g.T @ g / rows
        A_ref = A_new if A_ref is None else beta * A_ref + (1 - beta) * A_new
        G_ref = G_new if G_ref is None else beta * G_ref + (1 - beta) * G_new
        if t in (1, 3):
            A, G = pc.factors("")
            torch.testing.assert_close(A, A_ref, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(G, G_ref, rtol=1e-12, atol=1e-14)
            assert torch.equal(A, A.T) and torch.equal(G, G.T)
    saved = pc.state_dict()["layers"][""]["ema"]
    torch.testing.assert_close(saved["A"], A_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(saved["G"], G_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("low_rank", [True, False])
def test_wide_layer_update_is_the_damped_kronecker_solve(low_rank):
    """The preconditioned gradient of a layer wider than the panels (the low-rank path from the batch factors and
    the dense one) equals ``(G + sqrt(l)/pi I)^-1 grad (A + pi sqrt(l) I)^-1`` from the factors it read."""
    lin = _wide_layer(2 * _PANEL + 16, 2 * _PANEL + 5)  # d_in a multiple of 16: the homogeneous column apart
    damping = 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc = KFAC(lin, fisher="exact", damping=damping, kl_clip=None, update_freq=1, low_rank=low_rank)
    x, y = torch.randn(24, lin.in_features, dtype=D64), torch.randint(0, lin.out_features, (24,))
    out = lin(x)
    pc.update_statistics(out, y)
    F.cross_entropy(out, y).backward()
    raw = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
    pc.step()
    assert pc.last_low_rank == (("",) if low_rank else ())
    A, G = pc.factors("")
    pi, r = torch.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0])), damping**0.5
    expected = torch.linalg.solve(G + r / pi * torch.eye(G.shape[0], dtype=D64), raw)
    expected = torch.linalg.solve(A + pi * r * torch.eye(A.shape[0], dtype=D64), expected.T).T
    got = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
