"""K-FAC preconditioner: exactness against torch.func Fishers, factor definitions, composition with
geoopt optimisers, in-place activations, accumulation and state round trips."""

import io
import math
import warnings

import geoopt
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lpc_geom.models.base import Classifier, HeadOutput
from lpc_geom.optim.kfac import KFAC, DiagonalFisher, KFACLayer

D64 = torch.float64


def _quiet_kfac(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return KFAC(*args, **kwargs)


def _run_step(model, pc, x, y, loss_fn=None):
    """forward -> update_statistics -> backward -> precond.step; returns the raw gradient before K-FAC."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    logits = out.logits if isinstance(out, HeadOutput) else out
    pc.update_statistics(logits, y)
    loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(out, y)
    loss.backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    pc.step()
    return raw


def _aug_grad(lin: nn.Linear) -> torch.Tensor:
    return torch.cat([lin.weight.grad, lin.bias.grad[:, None]], dim=1)


def _pi(A, G):
    return math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))


def _factored_solve(A, G, grad, damping):
    """vec^{-1}( ((G + sqrt(l)/pi I) kron (A + pi sqrt(l) I))^{-1} vec(grad) ), vec row-major."""
    pi, r = _pi(A, G), math.sqrt(damping)
    M = torch.kron(G + r / pi * torch.eye(G.shape[0], dtype=D64), A + r * pi * torch.eye(A.shape[0], dtype=D64))
    return torch.linalg.solve(M, grad.reshape(-1)).reshape(grad.shape)


# --------------------------------------------------------------------------- exactness
def _softmax_regression_fisher(lin: nn.Linear, x: torch.Tensor):
    """Exact Fisher (torch.func) of softmax regression at inputs x, in row-major vec of [W | b]."""
    K, d = lin.weight.shape
    theta = torch.cat([lin.weight, lin.bias[:, None]], 1).detach().reshape(-1)

    def log_probs(th, xi):
        M = th.reshape(K, d + 1)
        return torch.log_softmax(M[:, :d] @ xi + M[:, d], dim=-1)

    F_ = torch.zeros(theta.numel(), theta.numel(), dtype=D64)
    for xi in x:
        J = jacrev(log_probs)(theta, xi)  # (K, P): gradients of log p_k
        p = log_probs(theta, xi).exp()
        F_ += J.T @ (p[:, None] * J)  # sum_k p_k grad log p_k grad log p_k^T
    return theta, F_ / x.shape[0], log_probs


@pytest.mark.parametrize(
    ("damping_mode", "damping"),
    [("eigen", 1e-3), ("eigen", 1e-10), ("factored", 1e-3)],
    ids=["eigen-damped", "eigen-undamped-limit", "factored-damped"],
)
def test_one_input_equals_exact_natural_gradient(damping_mode, damping):
    torch.manual_seed(0)
    d, K = 4, 3
    lin = nn.Linear(d, K).to(D64)
    x, y = torch.randn(1, d, dtype=D64), torch.tensor([2])
    theta, Fisher, log_probs = _softmax_regression_fisher(lin, x)
    P = Fisher.shape[0]

    # Independent check of the reference: for softmax regression the Fisher is the Hessian of the CE.
    H = hessian(lambda th: -log_probs(th, x[0])[y[0]])(theta)
    torch.testing.assert_close(H, Fisher, rtol=0, atol=1e-12)
    grad = torch.func.grad(lambda th: -log_probs(th, x[0])[y[0]])(theta)

    if damping_mode == "eigen" and damping < 1e-6:
        # damping -> 0: the pseudo-inverse natural gradient (the gradient lies in the range of F).
        expected = torch.linalg.pinv(Fisher, hermitian=True, rtol=1e-10) @ grad
    elif damping_mode == "eigen":
        expected = torch.linalg.solve(Fisher + damping * torch.eye(P, dtype=D64), grad)
    else:
        # One input: F is exactly a Kronecker product. Read its factors off F itself (up to a scale
        # split, to which factored damping is invariant) and apply the factored damping to them.
        blocks = Fisher.reshape(K, d + 1, K, d + 1)  # F[k, i, q, j] = G[k, q] A[i, j]
        A_F, G_F = torch.einsum("kikj->ij", blocks), torch.einsum("kiqi->kq", blocks)
        torch.testing.assert_close(torch.kron(G_F, A_F) / A_F.trace(), Fisher, rtol=1e-10, atol=1e-13)
        G_F = G_F / A_F.trace()  # now kron(G_F, A_F) = F
        expected = _factored_solve(A_F, G_F, grad.reshape(K, d + 1), damping).reshape(-1)

    pc = KFAC(lin, fisher="exact", damping=damping, damping_mode=damping_mode, kl_clip=None, update_freq=1)
    _run_step(lin, pc, x, y)
    got = _aug_grad(lin).reshape(-1)
    assert (got - expected).abs().max() <= 1e-6 * max(1.0, expected.abs().max())
    assert (got - grad).abs().max() > 1e-2  # preconditioning did something

    # The test discriminates: the empirical Fisher (a different matrix) gives another direction.
    lin2 = nn.Linear(d, K).to(D64)
    lin2.load_state_dict(lin.state_dict())
    pc2 = KFAC(lin2, fisher="empirical", damping=damping, damping_mode=damping_mode, kl_clip=None)
    _run_step(lin2, pc2, x, y)
    assert (_aug_grad(lin2).reshape(-1) - expected).abs().max() > 1e-2


def test_several_inputs_match_kronecker_from_definitions():
    torch.manual_seed(1)
    d, h, K, N, damping = 3, 5, 4, 6, 1e-2
    model = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, K)).to(D64)
    x, y = torch.randn(N, d, dtype=D64), torch.randint(0, K, (N,))
    pc = KFAC(model, fisher="exact", damping=damping, kl_clip=None)
    out = model(x)
    pc.update_statistics(out, y)
    # The training loss has a reduction of its own (sum); the factors must not care.
    F.cross_entropy(out, y, reduction="sum").backward()
    raw = {i: _aug_grad(model[i]).clone() for i in (0, 2)}
    pc.step()

    ones = torch.ones(N, 1, dtype=D64)
    s1 = model[0](x).detach()
    a1, a2 = torch.cat([x, ones], 1), torch.cat([torch.tanh(s1), ones], 1)
    p = torch.softmax(out.detach(), -1)
    Hs = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

    def logits_of_s1(s):
        return model[2](torch.tanh(s))

    J = torch.stack([jacrev(logits_of_s1)(s1[n]) for n in range(N)]).detach()  # (N, K, h)
    A = {0: a1.T @ a1 / N, 2: a2.T @ a2 / N}
    G = {0: (J.transpose(1, 2) @ Hs @ J).mean(0), 2: Hs.mean(0)}
    for i in (0, 2):
        fa, fg = pc.factors(str(i))
        torch.testing.assert_close(fa, A[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fg, G[i], rtol=1e-12, atol=1e-12)
        expected = _factored_solve(A[i], G[i], raw[i], damping)
        torch.testing.assert_close(_aug_grad(model[i]), expected, rtol=1e-9, atol=1e-9)


def _explicit_patches(x, kernel, stride, dilation, pad_fn):
    """Receptive-field patches by plain indexing, rows (n, t) in output raster order, columns (c, kh, kw)."""
    xp = pad_fn(x)
    N, _, H, W = xp.shape
    kh, kw = kernel
    Ho = (H - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    rows = []
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                r0, c0 = i * stride[0], j * stride[1]
                patch = xp[
                    n,
                    :,
                    r0 : r0 + dilation[0] * (kh - 1) + 1 : dilation[0],
                    c0 : c0 + dilation[1] * (kw - 1) + 1 : dilation[1],
                ]
                rows.append(patch.reshape(-1))
    return torch.stack(rows), Ho * Wo


@pytest.mark.parametrize("conv_kind", ["conv2d", "conv1d_same_circular"])
def test_conv_factors_and_gradient_layout_match_definitions(conv_kind):
    torch.manual_seed(2)
    N, K = 3, 3
    if conv_kind == "conv2d":
        conv = nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=1, dilation=(1, 1))
        x = torch.randn(N, 2, 4, 5, dtype=D64)

        def pad_fn(t):
            return F.pad(t, (1, 1, 1, 1))

        kernel, stride, dilation = (2, 3), (1, 2), (1, 1)
    else:
        conv = nn.Conv1d(2, 3, 3, padding="same", dilation=2, padding_mode="circular")
        x = torch.randn(N, 2, 7, dtype=D64)
        L = x.shape[-1]

        def pad_fn(t):  # circular padding by explicit modular indexing
            idx = torch.arange(-2, L + 2) % L
            return t[..., idx].unsqueeze(2)

        kernel, stride, dilation = (1, 3), (1, 1), (1, 2)
    conv = conv.to(D64)
    with torch.no_grad():
        flat = conv(x).flatten(1).shape[1]
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(flat, K)).to(D64)
    y = torch.randint(0, K, (N,))
    pc = KFAC(model, fisher="empirical", damping=1e-3, kl_clip=None)
    raw = _run_step(model, pc, x, y)

    patches, T = _explicit_patches(x, kernel, stride, dilation, pad_fn)
    abar = torch.cat([patches, torch.ones(len(patches), 1, dtype=D64)], 1)
    s = conv(x)
    s_det = s.detach().requires_grad_(True)
    logits = model[3](model[2](torch.relu(s_det)))
    (gs,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), s_det)
    g_rows = gs.flatten(2).transpose(1, 2).reshape(-1, gs.shape[1])  # per-example gradients, rows (n, t)
    A_def = abar.T @ abar / (N * T)
    G_def = g_rows.T @ g_rows / N
    fa, fg = pc.factors("0")
    torch.testing.assert_close(fa, A_def, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fg, G_def, rtol=1e-12, atol=1e-12)
    # The weight gradient in the (c_out, c_in*k [+1]) layout is sum_{n,t} g a^T / N: patch order matches.
    grad_def = g_rows.T @ abar / N
    grad_raw = torch.cat([raw["0.weight"].reshape(3, -1), raw["0.bias"][:, None]], 1)
    torch.testing.assert_close(grad_raw, grad_def, rtol=1e-10, atol=1e-12)
    got = torch.cat([conv.weight.grad.reshape(3, -1), conv.bias.grad[:, None]], 1)
    torch.testing.assert_close(got, _factored_solve(A_def, G_def, grad_def, 1e-3), rtol=1e-9, atol=1e-9)


def test_diagonal_fisher_is_the_diagonal_of_the_exact_fisher():
    torch.manual_seed(17)
    d, K, N, damping = 4, 3, 5, 1e-2
    lin = nn.Linear(d, K).to(D64)
    x, y = torch.randn(N, d, dtype=D64), torch.randint(0, K, (N,))
    _, Fisher, _ = _softmax_regression_fisher(lin, x)
    pc = DiagonalFisher(lin, fisher="exact", damping=damping, kl_clip=None)
    raw = _run_step(lin, pc, x, y)
    D = pc.diagonal("")
    torch.testing.assert_close(D.reshape(-1), Fisher.diagonal(), rtol=1e-12, atol=1e-14)
    full = torch.cat([raw["weight"], raw["bias"][:, None]], 1)
    torch.testing.assert_close(_aug_grad(lin), full / (D + damping), rtol=1e-12, atol=1e-14)


def test_diagonal_fisher_of_a_convolution_uses_per_example_gradients():
    torch.manual_seed(18)
    N, K = 4, 3
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.SiLU(inplace=True), nn.Flatten(), nn.Linear(18, K))
    model = model.to(D64)
    x = torch.randn(N, 2, 6, dtype=D64)
    pc = DiagonalFisher(model, fisher="exact", kl_clip=None)
    pc.update_statistics(model(x))
    pc.step()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def log_probs(p, xi):
        return torch.log_softmax(functional_call(model, p, (xi[None],))[0], -1)

    for layer in ("0", "3"):
        expected = 0
        for xi in x:
            J = jacrev(log_probs)(params, xi)  # per class: gradients of log p_k
            p = log_probs(params, xi).exp()
            Jw, Jb = J[f"{layer}.weight"].reshape(K, params[f"{layer}.weight"].shape[0], -1), J[f"{layer}.bias"]
            Jm = torch.cat([Jw, Jb[..., None]], -1)  # (K, d_out, d_in + 1)
            expected = expected + (p[:, None, None] * Jm**2).sum(0)
        torch.testing.assert_close(pc.diagonal(layer), expected / N, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- scale, Fisher types
def test_output_gradient_scale_is_per_example():
    torch.manual_seed(3)
    lin = nn.Linear(3, 4).to(D64)
    x, y = torch.randn(2, 3, dtype=D64), torch.tensor([0, 3])
    factors = []
    for reps in (1, 5):
        pc = KFAC(lin, fisher="empirical", kl_clip=None)
        out = lin(x.repeat(reps, 1))
        pc.update_statistics(out, y.repeat(reps))
        pc.step()
        factors.append(pc.factors(""))
        pc.remove()
    torch.testing.assert_close(factors[0][0], factors[1][0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(factors[0][1], factors[1][1], rtol=1e-13, atol=1e-14)
    r = torch.softmax(lin(x), -1).detach() - F.one_hot(y, 4)
    torch.testing.assert_close(factors[0][1], r.T @ r / 2, rtol=1e-13, atol=1e-14)  # not / N^2


def test_mc_fisher_is_one_pass_with_sampled_labels_and_unbiased():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4)).to(D64)
    x, y = torch.randn(8, 3, dtype=D64), torch.randint(0, 4, (8,))
    pc = KFAC(model, fisher="mc", kl_clip=None, generator=torch.Generator().manual_seed(7))
    _run_step(model, pc, x, y)
    p = torch.softmax(model(x), -1).detach()
    drawn = torch.multinomial(p, 1, replacement=True, generator=torch.Generator().manual_seed(7))[:, 0]
    ref = KFAC(model, fisher="empirical", kl_clip=None)
    out = model(x)
    ref.update_statistics(out, drawn)
    ref.step()
    for name in ("0", "2"):  # the real backward added nothing: one sampled-label pass only
        torch.testing.assert_close(pc.factors(name)[1], ref.factors(name)[1], rtol=1e-12, atol=1e-14)
    ex = KFAC(model, fisher="exact", kl_clip=None)
    mc = KFAC(model, fisher="mc", kl_clip=None, mc_samples=4000, generator=torch.Generator().manual_seed(0))
    out = model(x)
    ex.update_statistics(out, y)
    mc.update_statistics(out, y)
    ex.step()
    mc.step()
    for name in ("0", "2"):
        G_ex, G_mc = ex.factors(name)[1], mc.factors(name)[1]
        assert (G_mc - G_ex).abs().max() < 0.06 * G_ex.abs().max()


# --------------------------------------------------------------------------- hooks and losses
def _mlp(inplace: bool):
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 8), nn.SiLU(inplace=inplace), nn.Linear(8, 3)
    ).to(D64)


def test_inplace_activations_give_the_same_preconditioned_gradient():
    torch.manual_seed(5)
    ref, inp = _mlp(False), _mlp(True)
    with torch.no_grad():
        ref[0].bias[[2, 5]] = -100.0  # two units that the ReLU never lets through
    inp.load_state_dict(ref.state_dict())
    x, y = torch.randn(10, 4, dtype=D64), torch.randint(0, 3, (10,))
    pcs = [KFAC(m, fisher="exact", lr=0.1, kl_clip=1e-2) for m in (ref, inp)]
    for m, pc in zip((ref, inp), pcs, strict=True):
        _run_step(m, pc, x, y)
    for name in ("0", "2", "4"):
        for f_ref, f_inp in zip(pcs[0].factors(name), pcs[1].factors(name), strict=True):
            torch.testing.assert_close(f_inp, f_ref, rtol=1e-13, atol=1e-15)
    for (n, p_ref), p_inp in zip(ref.named_parameters(), inp.parameters(), strict=True):
        torch.testing.assert_close(p_inp.grad, p_ref.grad, rtol=1e-12, atol=1e-14, msg=n)
    # The ReLU mask is in G of the first layer: units that are never active have zero rows.
    dead = (ref[0](x) <= 0).all(0)
    assert dead.tolist() == [False, False, True, False, False, True, False, False]
    G0 = pcs[0].factors("0")[1]
    assert G0[dead].abs().max() == 0 and G0[:, dead].abs().max() == 0
    assert G0[~dead][:, ~dead].diagonal().min() > 0


class _Head(nn.Module):
    def __init__(self, d, dz, K):
        super().__init__()
        self.proj = nn.Linear(d, dz)
        self.classifier = nn.Linear(dz, K)

    def forward(self, h):
        z = self.proj(h)
        return HeadOutput(self.classifier(z), z, (z**2).sum(-1))


def test_compression_gradient_enters_grad_but_not_the_fisher():
    torch.manual_seed(6)
    backbone = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True))
    backbone.out_dim = 7
    base = Classifier(backbone, _Head(7, 3, 4)).to(D64)
    x, y = torch.randn(12, 5, dtype=D64), torch.randint(0, 4, (12,))
    results = {}
    for gamma in (0.0, 5.0):
        model = Classifier(backbone, _Head(7, 3, 4)).to(D64)
        model.load_state_dict(base.state_dict())
        pc = KFAC(model, fisher="exact", damping=1e-2, kl_clip=None)

        def objective(out, y, gamma=gamma):
            return F.cross_entropy(out.logits, y) + gamma * out.energy.mean()

        raw = _run_step(model, pc, x, y, objective)
        results[gamma] = (pc, raw, model)
    (pc0, raw0, _), (pc5, raw5, m5) = results[0.0], results[5.0]
    assert set(pc5.layers) == {"backbone.0", "head.proj", "head.classifier"}
    assert (raw5["head.proj.weight"] - raw0["head.proj.weight"]).abs().max() > 1e-3
    for name in pc5.layers:
        for f0, f5 in zip(pc0.factors(name), pc5.factors(name), strict=True):
            torch.testing.assert_close(f5, f0, rtol=0, atol=0)
    A, G = pc5.factors("head.proj")
    full = torch.cat([raw5["head.proj.weight"], raw5["head.proj.bias"][:, None]], 1)
    torch.testing.assert_close(_aug_grad(m5.head.proj), _factored_solve(A, G, full, 1e-2), rtol=1e-9, atol=1e-10)


def test_unsupported_layers_are_listed_once_and_left_untouched():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    with pytest.warns(UserWarning, match="1.weight") as record:
        pc = KFAC(model, fisher="empirical", lr=0.1)
    assert len(record) == 1
    assert pc.unsupported == ["1.weight (LayerNorm)", "1.bias (LayerNorm)"]
    assert pc.layers == {"0": "linear", "2": "linear"}
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = _run_step(model, pc, x, y)
    assert torch.equal(model[1].weight.grad, raw["1.weight"])
    assert not torch.equal(model[0].weight.grad, raw["0.weight"])


def test_frozen_parameters_are_neither_preconditioned_nor_reported():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Linear(2, 2))
    model[2].bias.requires_grad_(False)
    model[3].requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pc = KFAC(model, fisher="exact", kl_clip=None)
    assert pc.layers == {"0": "linear", "2": "linear"} and pc.unsupported == []
    _run_step(model, pc, torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    assert pc.factors("2")[0].shape == (4, 4)  # no homogeneous coordinate for a frozen bias
    assert model[2].bias.grad is None and model[3].weight.grad is None


# --------------------------------------------------------------------------- geoopt
class StiefelProjection(nn.Module):
    """``z = h @ W`` with ``W`` (d_in, d_out) on the Stiefel manifold; declares itself to K-FAC."""

    kfac_layout = "in_out"

    def __init__(self, d_in, d_out):
        super().__init__()
        man = geoopt.EuclideanStiefel()
        self.weight = geoopt.ManifoldParameter(man.random(d_in, d_out, dtype=torch.float32), manifold=man)

    def forward(self, h):
        return h @ self.weight


class PoincarePrototypeHead(nn.Module):
    """Stiefel projection to the tangent space at 0, expmap0 to the ball, logits = -d(z, p_k)^2."""

    def __init__(self, d, dz, K):
        super().__init__()
        self.ball = geoopt.PoincareBall()
        self.proj = StiefelProjection(d, dz)
        self.prototypes = geoopt.ManifoldParameter(self.ball.expmap0(0.5 * torch.randn(K, dz)), manifold=self.ball)

    def forward(self, h):
        v = self.proj(h)
        z = self.ball.expmap0(v)
        logits = -(self.ball.dist(z[:, None, :], self.prototypes[None]) ** 2)
        return HeadOutput(logits, z, 4 * (v**2).sum(-1))


def test_kfac_with_riemannian_adam_stays_on_the_manifolds_and_learns():
    torch.manual_seed(8)
    K, N = 3, 90
    centers = 3 * torch.randn(K, 6)
    y = torch.arange(N) % K
    x = centers[y] + torch.randn(N, 6)
    backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=True))
    backbone.out_dim = 16
    model = Classifier(backbone, PoincarePrototypeHead(16, 4, K))
    lr = 0.02
    with pytest.warns(UserWarning, match="head.prototypes"):
        pc = KFAC(model, fisher="mc", damping=1e-2, update_freq=5, lr=lr, kl_clip=1e-2)
    assert pc.layers == {"backbone.0": "linear", "head.proj": "linear(in_out)"}
    opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=lr, stabilize=10)

    def loss_of(out):
        return F.cross_entropy(out.logits, y) + 1e-3 * out.energy.mean()

    with torch.no_grad():
        first = loss_of(model(x)).item()
    for _ in range(60):
        opt.zero_grad()
        out = model(x)
        pc.update_statistics(out.logits, y)
        loss_of(out).backward()
        pc.step()
        opt.step()
    W = model.head.proj.weight
    with torch.no_grad():
        last = loss_of(model(x)).item()
    assert last < 0.5 * first
    assert (W.T @ W - torch.eye(4)).abs().max() < 1e-5
    assert model.head.prototypes.norm(dim=-1).max() < 1.0
    assert pc.steps == 60


class _InlineStiefelHead(nn.Module):
    """A head computing ``z = h @ W`` inside its own forward (no submodule to hook)."""

    def __init__(self, W, classifier):
        super().__init__()
        self.W = geoopt.ManifoldParameter(W.clone(), manifold=geoopt.EuclideanStiefel())
        self.classifier = classifier

    def forward(self, h):
        z = h @ self.W
        return HeadOutput(self.classifier(z), z, (z**2).sum(-1))


def test_in_out_layout_and_extra_layers_match_a_transposed_linear():
    torch.manual_seed(9)
    d, dz, K, N = 5, 3, 4, 9
    W = geoopt.EuclideanStiefel().random(d, dz, dtype=D64)
    cls = nn.Linear(dz, K).to(D64)
    x, y = torch.randn(N, d, dtype=D64), torch.randint(0, K, (N,))

    head = _InlineStiefelHead(W, cls)
    spec = KFACLayer(head, head.W, layout="in_out", get_output=lambda out: out.latents)
    pc_spec = KFAC(head, fisher="exact", lr=0.05, extra_layers={"stiefel": spec})
    assert pc_spec.layers == {"stiefel": "linear(in_out)", "classifier": "linear"}
    _run_step(head, pc_spec, x, y, lambda out, y: F.cross_entropy(out.logits, y))

    lin = nn.Linear(d, dz, bias=False).to(D64)
    with torch.no_grad():
        lin.weight.copy_(W.T)
    ref = nn.Sequential(lin, nn.Linear(dz, K).to(D64))
    ref[1].load_state_dict(cls.state_dict())
    pc_ref = KFAC(ref, fisher="exact", lr=0.05)
    _run_step(ref, pc_ref, x, y)
    torch.testing.assert_close(head.W.grad, lin.weight.grad.T, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(head.classifier.weight.grad, ref[1].weight.grad, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- accumulation, state
def test_gradient_accumulation_equals_one_large_batch():
    torch.manual_seed(10)
    base = _mlp(True)
    x, y = torch.randn(8, 4, dtype=D64), torch.randint(0, 3, (8,))
    grads = []
    for chunks in (1, 2, 4):
        model = _mlp(True)
        model.load_state_dict(base.state_dict())
        pc = KFAC(model, fisher="exact", lr=0.3, kl_clip=1e-3)
        for _ in range(2):  # two optimiser steps, so the moving average is exercised too
            model.zero_grad()
            for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
                out = model(xc)
                pc.update_statistics(out, yc)
                (F.cross_entropy(out, yc) / chunks).backward()
            pc.step()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for g_ref, g in zip(grads[0], other, strict=True):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("chunks", [1, 2])
def test_moving_average_of_factors_with_fewer_rows_than_the_factor(chunks):
    """With fewer batch rows than a factor's size the products are formed at the step, straight into the
    moving average (with micro-batches, first into their pooled mean): the factors are still
    ``A_t = beta A_{t-1} + (1 - beta) abar^T abar / N`` and ``G_t = beta G_{t-1} + (1 - beta) g^T g / N`` with
    the empirical Fisher's ``g = softmax(s) - e_y``."""
    torch.manual_seed(17)
    lin = nn.Linear(6, 8).to(D64)
    beta = 0.8
    pc = KFAC(lin, fisher="empirical", ema_decay=beta, kl_clip=None, low_rank=False)
    A_ref = G_ref = None
    for t in range(3):
        x, y = torch.randn(4, 6, dtype=D64), torch.randint(0, 8, (4,))
        lin.zero_grad()
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            out = lin(xc)
            pc.update_statistics(out, yc)
            (F.cross_entropy(out, yc) * len(yc) / len(y)).backward()
        # deferred once a moving average exists, unless a second micro-batch pooled them into the mean
        assert set(pc._state[""].deferred) == ({"A", "G"} if t and chunks == 1 else set())
        pc.step()
        abar = torch.cat([x, torch.ones(4, 1, dtype=D64)], 1)
        g = torch.softmax(lin(x), 1).detach() - F.one_hot(y, 8).to(D64)
        A_new, G_new = abar.T @ abar / 4, g.T @ g / 4
        A_ref = A_new if A_ref is None else beta * A_ref + (1 - beta) * A_new
        G_ref = G_new if G_ref is None else beta * G_ref + (1 - beta) * G_new
        A, G = pc.factors("")
        torch.testing.assert_close(A, A_ref, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(G, G_ref, rtol=1e-13, atol=1e-14)
        assert pc._state[""].deferred == {}  # nothing left over for the next step


@pytest.mark.parametrize("damping_mode", ["factored", "eigen"])
def test_state_dict_round_trip_continues_identically(damping_mode):
    torch.manual_seed(11)
    model = _mlp(False)
    x, y = torch.randn(16, 4, dtype=D64), torch.randint(0, 3, (16,))
    pc = KFAC(model, fisher="exact", update_freq=3, lr=0.1, damping_mode=damping_mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(4):
        _run_step(model, pc, x[i::4], y[i::4])
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "kfac": pc.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    clone = _mlp(False)
    clone.load_state_dict(saved["model"])
    pc2 = KFAC(clone, fisher="exact", update_freq=3, lr=0.1, damping_mode=damping_mode)
    pc2.load_state_dict(saved["kfac"])
    assert pc2.steps == 4
    for m, p in ((model, pc), (clone, pc2)):  # step 4: no refresh, uses the restored inverses
        _run_step(m, p, x[:5], y[:5])
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
    with pytest.raises(KeyError):
        KFAC(nn.Sequential(nn.Linear(4, 3)).to(D64), lr=0.1).load_state_dict(saved["kfac"])
    with pytest.raises(ValueError, match="KFAC"):
        DiagonalFisher(clone, kl_clip=None).load_state_dict(saved["kfac"])


# --------------------------------------------------------------------------- schedule, clipping, numerics
def test_moving_average_and_refresh_schedule():
    torch.manual_seed(12)
    lin = nn.Linear(3, 2).to(D64)
    pc = KFAC(lin, fisher="empirical", update_freq=3, ema_decay=0.9, kl_clip=None, factor_freq=1)
    xs = [torch.randn(5, 3, dtype=D64) for _ in range(4)]
    y = torch.tensor([0, 1, 1, 0, 1])
    bases, As = [], []
    for xb in xs:
        _run_step(lin, pc, xb, y)
        bases.append(pc._state[""].cache["inv_A"])
        As.append(pc.factors("")[0].clone())
    assert bases[0] is bases[1] is bases[2] and bases[3] is not bases[2]
    a1 = torch.cat([xs[1], torch.ones(5, 1, dtype=D64)], 1)
    torch.testing.assert_close(As[1], 0.9 * As[0] + 0.1 * a1.T @ a1 / 5, rtol=1e-13, atol=1e-14)

    skip = KFAC(lin, fisher="empirical", factor_freq=2, kl_clip=None)
    _run_step(lin, skip, xs[0], y)
    A0 = skip.factors("")[0].clone()
    _run_step(lin, skip, xs[1], y)  # odd step: no statistics, no extra backward
    assert torch.equal(skip.factors("")[0], A0)

    inv_before = skip._state[""].cache["inv_A"]
    skip.damping = 0.5  # a new damping takes effect at the next step, without waiting for a refresh
    _run_step(lin, skip, xs[2], y)
    st = skip._state[""]
    assert st.cache["inv_A"] is not inv_before and st.refreshed_damping == 0.5
    A, G = skip.factors("")
    pi, r = _pi(A, G), math.sqrt(0.5)
    torch.testing.assert_close(st.cache["inv_A"] @ (A + pi * r * torch.eye(4, dtype=D64)), torch.eye(4, dtype=D64))


def test_kl_clipping_bounds_the_quadratic_kl_estimate():
    torch.manual_seed(13)
    model = _mlp(False)
    x, y = torch.randn(6, 4, dtype=D64), torch.randint(0, 3, (6,))
    lr, kl = 0.5, 1e-6
    pc = KFAC(model, fisher="exact", lr=lr, kl_clip=kl)
    raw = _run_step(model, pc, x, y)
    assert pc.last_kl_scale < 1.0
    # The clipped update nu * v has the quadratic KL estimate lr^2 nu^2 <v, g> = lr^2 nu <nu v, g> = kl.
    vg = sum((p.grad * raw[n]).sum() for n, p in model.named_parameters())
    assert math.isclose(lr**2 * pc.last_kl_scale * vg.item(), kl, rel_tol=1e-9)
    pc_loose = KFAC(model, fisher="exact", lr=lr, kl_clip=1e6)
    _run_step(model, pc_loose, x, y)
    assert pc_loose.last_kl_scale == 1.0


@pytest.mark.parametrize("damping_mode", ["factored", "eigen"])
def test_factorisation_failure_is_retried_in_float64(monkeypatch, damping_mode):
    torch.manual_seed(14)
    model = _mlp(False).float()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    ref = KFAC(model, fisher="exact", kl_clip=None, damping=0.05, damping_mode=damping_mode)
    _run_step(model, ref, x, y)
    expected = [p.grad.clone() for p in model.parameters()]
    assert ref.float64_retries == 0

    real_eigh, real_cholesky_ex = torch.linalg.eigh, torch.linalg.cholesky_ex

    def flaky_eigh(m, *args, **kwargs):
        if m.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated: the algorithm failed to converge")
        return real_eigh(m, *args, **kwargs)

    def flaky_cholesky_ex(m, *args, **kwargs):
        chol, info = real_cholesky_ex(m, *args, **kwargs)
        return (chol, torch.ones_like(info)) if m.dtype == torch.float32 else (chol, info)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", flaky_cholesky_ex)
    pc = KFAC(model, fisher="exact", kl_clip=None, damping=0.05, damping_mode=damping_mode)
    _run_step(model, pc, x, y)
    assert pc.float64_retries == 6  # A and G of three layers
    for p, e in zip(model.parameters(), expected, strict=True):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)


class _DataDependentIdentity(torch.autograd.Function):
    """Identity whose backward branches on a tensor value (``.item()``), which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g if g.abs().max().item() < 1e30 else torch.zeros_like(g)


def test_exact_fisher_falls_back_to_one_backward_per_class():
    torch.manual_seed(16)
    plain = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(D64)

    class Guarded(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = plain

        def forward(self, x):
            return self.inner[2](_DataDependentIdentity.apply(self.inner[1](self.inner[0](x))))

    x = torch.randn(7, 3, dtype=D64)
    h = plain[0](x)
    logits = plain[2](_DataDependentIdentity.apply(plain[1](h)))
    edge = torch.autograd.graph.get_gradient_edge(h)
    with pytest.raises(RuntimeError, match="item"):  # the batched path really is unavailable here
        torch.autograd.grad(logits, [edge], torch.randn(2, 7, 4, dtype=D64), is_grads_batched=True)
    factors = []
    for model in (plain, Guarded()):
        pc = KFAC(model, fisher="exact", kl_clip=None)
        pc.update_statistics(model(x))
        pc.step()
        factors.append([pc.factors(n) for n in pc.layers])
        pc.remove()
    for (a0, g0), (a1, g1) in zip(*factors, strict=True):
        torch.testing.assert_close(a1, a0, rtol=0, atol=0)
        torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-15)


def test_update_statistics_requires_a_forward_and_errors_clearly():
    lin = nn.Linear(2, 2)
    pc = KFAC(lin, fisher="empirical", kl_clip=None)
    out = lin(torch.randn(3, 2))
    pc.update_statistics(out, torch.tensor([0, 1, 0]))
    with pytest.raises(RuntimeError, match="no layer was recorded"):
        pc.update_statistics(out, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="lr"):
        KFAC(lin, kl_clip=1e-3)
    with torch.no_grad():
        lin(torch.randn(3, 2))
    assert pc._records == []


def test_distributed_statistics_are_summed(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    torch.manual_seed(15)
    model = _mlp(False)
    x, y = torch.randn(6, 4, dtype=D64), torch.randint(0, 3, (6,))
    ref = KFAC(model, fisher="exact", kl_clip=None)
    _run_step(model, ref, x, y)
    expected = [p.grad.clone() for p in model.parameters()]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        pc = KFAC(model, fisher="exact", kl_clip=None)
        assert pc.distributed
        _run_step(model, pc, x, y)
    finally:
        dist.destroy_process_group()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
