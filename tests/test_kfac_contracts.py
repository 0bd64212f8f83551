"""K-FAC / DiagonalFisher contracts: cadence of statistics, KL clipping with the step's learning rate,
documented defaults, argument checks, layer discovery, state round trips and the damped inverses."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lpc_geom.optim.kfac import KFAC, DiagonalFisher, KFACLayer

D64 = torch.float64


def _abar(x):
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def _step(model, pc, x, y, lr=None, extra_loss=None):
    """forward -> update_statistics -> backward -> step(lr); returns the raw gradients."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    pc.update_statistics(out, y)
    loss = F.cross_entropy(out, y)
    if extra_loss is not None:
        loss = loss + extra_loss(model)
    loss.backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    pc.step(lr=lr)
    return raw


def _mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D64)


class _CountBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _CountBackward.calls += 1
        return g


# --------------------------------------------------------------------------- defaults and arguments
def test_documented_defaults():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).to(D64)
    pc = KFAC(lin, lr=0.1)
    assert (pc.fisher, pc.damping, pc.update_freq, pc.kl_clip, pc.factor_freq, pc.mc_samples, pc.damping_mode) == (
        "mc", 1e-3, 10, 1e-3, 1, 1, "factored")
    diag = DiagonalFisher(lin, lr=0.1)
    assert (diag.fisher, diag.damping, diag.kl_clip, diag.factor_freq, diag.mc_samples) == ("mc", 1e-3, 1e-3, 1, 1)
    # default moving-average decay 0.95, observed through the factors of two batches
    x0, x1 = torch.randn(5, 3, dtype=D64), torch.randn(5, 3, dtype=D64)
    y = torch.tensor([0, 1, 1, 0, 1])
    for m in (KFAC(lin, fisher="empirical", kl_clip=None), DiagonalFisher(lin, fisher="empirical", kl_clip=None)):
        _step(lin, m, x0, y)
        first = (m.factors("")[0] if isinstance(m, KFAC) else m.diagonal("")).clone()
        _step(lin, m, x1, y)
        if isinstance(m, KFAC):
            torch.testing.assert_close(m.factors("")[0], 0.95 * first + 0.05 * _abar(x1).T @ _abar(x1) / 5,
                                       rtol=1e-13, atol=1e-14)
        else:
            assert not torch.allclose(m.diagonal(""), first)
        m.remove()


@pytest.mark.parametrize("cls", [KFAC, DiagonalFisher])
def test_arguments_are_checked(cls):
    lin = nn.Linear(2, 2)
    bad = [
        ({"fisher": "true"}, ValueError, "fisher must be 'empirical', 'mc' or 'exact'"),
        ({"damping": 0.0}, ValueError, "damping must be positive"),
        ({"damping": -1.0}, ValueError, "damping must be positive"),
        ({"factor_freq": 0}, ValueError, "factor_freq and mc_samples must be >= 1"),
        ({"mc_samples": 0}, ValueError, "factor_freq and mc_samples must be >= 1"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must lie in \[0, 1\)"),
        ({"ema_decay": -0.1}, ValueError, r"ema_decay must lie in \[0, 1\)"),
        ({"kl_clip": 1e-3, "lr": None}, ValueError, "KL clipping needs the optimiser's learning rate"),
    ]
    if cls is KFAC:
        bad += [({"update_freq": 0}, ValueError, "update_freq must be >= 1"),
                ({"damping_mode": "exact"}, ValueError, "damping_mode must be 'factored' or 'eigen'")]
    for kwargs, exc, msg in bad:
        kwargs = {"kl_clip": None, **kwargs}
        with pytest.raises(exc, match=msg):
            cls(lin, **kwargs)
    # boundaries that are accepted
    pc = cls(lin, kl_clip=None, ema_decay=0.0, factor_freq=1, mc_samples=1, damping=1e-12)
    assert pc.ema_decay == 0.0
    assert cls(lin, kl_clip=0.0).kl_clip == 0.0  # 0 disables clipping: no lr needed


def test_update_statistics_checks_its_inputs():
    lin = nn.Linear(3, 2)
    pc = KFAC(lin, fisher="empirical", kl_clip=None)
    out = lin(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, K\), got \(4, 2, 1\)"):
        pc.update_statistics(out[..., None], torch.tensor([0, 1, 0, 1]))
    with pytest.raises(RuntimeError, match="logits do not require grad"):
        pc.update_statistics(out.detach(), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="fisher='empirical' needs the labels"):
        pc.update_statistics(out)


# --------------------------------------------------------------------------- cadence
def test_factor_freq_records_only_on_due_steps_and_skips_the_fisher_backward():
    torch.manual_seed(1)
    lin = nn.Linear(3, 2).to(D64)
    seen = []

    def get_input(args, kwargs):
        seen.append(1)
        return args[0]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return _CountBackward.apply(self.lin(x))

    net = Net()
    spec = KFACLayer(module=lin, weight=lin.weight, bias=lin.bias, get_input=get_input)
    # low_rank=False: the low-rank preconditioner reads every step's inputs (for the step, not the statistics)
    pc = KFAC(net, fisher="empirical", factor_freq=2, ema_decay=0.5, kl_clip=None, update_freq=1,
              extra_layers={"lin": spec}, low_rank=False)
    xs = [torch.randn(5, 3, dtype=D64) for _ in range(4)]
    y = torch.tensor([0, 1, 1, 0, 1])
    backward_calls, records = [], []
    for x in xs:
        _CountBackward.calls, seen[:] = 0, []
        _step(net, pc, x, y)
        backward_calls.append(_CountBackward.calls)
        records.append(len(seen))
    # due steps (0, 2): Fisher backward + loss backward; the others: the loss backward only, no recording
    assert backward_calls == [2, 1, 2, 1]
    assert records == [1, 0, 1, 0]
    A = pc.factors("lin")[0]
    expected = 0.5 * _abar(xs[0]).T @ _abar(xs[0]) / 5 + 0.5 * _abar(xs[2]).T @ _abar(xs[2]) / 5
    torch.testing.assert_close(A, expected, rtol=1e-13, atol=1e-14)


def test_inverses_are_refreshed_every_update_freq_steps():
    torch.manual_seed(2)
    model = _mlp()
    xs = [torch.randn(6, 4, dtype=D64) for _ in range(5)]
    ys = [torch.randint(0, 3, (6,)) for _ in range(5)]
    # update_freq=3: steps 0 and 3 refresh; step 1, 2 and 4 use the inverses of the last refresh.
    pc = KFAC(model, fisher="exact", update_freq=3, kl_clip=None, damping=1e-2)
    for i in range(5):
        raw = _step(model, pc, xs[i], ys[i])
        A, G = pc.factors("2")
        if i in (0, 3):
            refreshed = (A.clone(), G.clone())
        Ar, Gr = refreshed
        pi, r = math.sqrt((Ar.trace() / Ar.shape[0]) / (Gr.trace() / Gr.shape[0])), math.sqrt(1e-2)
        grad = torch.cat([raw["2.weight"], raw["2.bias"][:, None]], 1)
        expected = torch.linalg.solve(Gr + r / pi * torch.eye(3, dtype=D64), grad) @ torch.linalg.inv(
            Ar + r * pi * torch.eye(7, dtype=D64))
        got = torch.cat([model[2].weight.grad, model[2].bias.grad[:, None]], 1)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- KL clipping
def test_kl_clip_uses_the_learning_rate_passed_to_step():
    torch.manual_seed(3)
    model = _mlp()
    x, y = torch.randn(6, 4, dtype=D64), torch.randint(0, 3, (6,))
    kl, lr_step = 1e-6, 0.05
    pc = KFAC(model, fisher="exact", lr=100.0, kl_clip=kl)
    raw = _step(model, pc, x, y, lr=lr_step)
    assert pc.lr == 100.0  # the attribute is not overwritten by the per-step value
    vg = sum((p.grad * raw[n]).sum() for n, p in model.named_parameters()).item()
    nu = pc.last_kl_scale
    assert nu < 1.0
    assert math.isclose(lr_step**2 * nu * vg, kl, rel_tol=1e-9)
    # the same step without lr= uses the attribute (a much stronger clip)
    _step(model, pc, x, y)
    assert pc.last_kl_scale < nu / 100


def test_zero_gradient_is_not_clipped_and_stays_zero():
    torch.manual_seed(4)
    model = _mlp()
    x, y = torch.randn(6, 4, dtype=D64), torch.randint(0, 3, (6,))
    pc = KFAC(model, fisher="exact", lr=0.1, kl_clip=1e-3)
    model.zero_grad()
    out = model(x)
    pc.update_statistics(out, y)
    (0.0 * out.sum()).backward()
    pc.step()
    assert pc.last_kl_scale == 1.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


def test_diagonal_fisher_kl_clip_and_empirical_diagonal():
    torch.manual_seed(5)
    lin = nn.Linear(3, 4).to(D64)
    x, y = torch.randn(7, 3, dtype=D64), torch.randint(0, 4, (7,))
    damping, kl, lr = 1e-2, 1e-7, 0.3
    pc = DiagonalFisher(lin, fisher="empirical", damping=damping, kl_clip=kl, lr=lr)
    raw = _step(lin, pc, x, y)
    r = torch.softmax(lin(x), -1).detach() - F.one_hot(y, 4)
    per_example = r[:, :, None] * _abar(x)[:, None, :]  # (N, K, d + 1): gradient of each example's CE
    D = (per_example**2).mean(0)
    torch.testing.assert_close(pc.diagonal(""), D, rtol=1e-12, atol=1e-15)
    g = torch.cat([raw["weight"], raw["bias"][:, None]], 1)
    v = g / (D + damping)
    nu = min(1.0, math.sqrt(kl / (lr**2 * (v * g).sum().item())))
    assert nu < 1.0 and math.isclose(pc.last_kl_scale, nu, rel_tol=1e-12)
    torch.testing.assert_close(torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1), nu * v,
                               rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- Fisher types
def test_empirical_fisher_accepts_soft_targets():
    torch.manual_seed(6)
    lin = nn.Linear(3, 4).to(D64)
    x = torch.randn(5, 3, dtype=D64)
    t = torch.softmax(torch.randn(5, 4, dtype=D64), -1)
    pc = KFAC(lin, fisher="empirical", kl_clip=None)
    pc.update_statistics(lin(x), t)
    pc.step()
    r = torch.softmax(lin(x), -1).detach() - t
    A, G = pc.factors("")
    torch.testing.assert_close(G, r.T @ r / 5, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(A, _abar(x).T @ _abar(x) / 5, rtol=1e-12, atol=1e-15)
    diag = DiagonalFisher(lin, fisher="empirical", kl_clip=None)
    diag.update_statistics(lin(x), t)
    diag.step()
    torch.testing.assert_close(diag.diagonal(""), ((r[:, :, None] * _abar(x)[:, None, :]) ** 2).mean(0),
                               rtol=1e-12, atol=1e-15)


def test_mc_fisher_is_reproducible_from_its_generator_and_ignores_labels():
    torch.manual_seed(7)
    model = _mlp()
    x = torch.randn(6, 4, dtype=D64)
    got = []
    for seed, labels in ((3, torch.zeros(6, dtype=torch.long)), (3, None), (4, None)):
        pc = KFAC(model, fisher="mc", mc_samples=3, kl_clip=None, generator=torch.Generator().manual_seed(seed))
        pc.update_statistics(model(x), labels)
        pc.step()
        got.append(pc.factors("2")[1])
        pc.remove()
    assert torch.equal(got[0], got[1]) and not torch.equal(got[0], got[2])


# --------------------------------------------------------------------------- layer discovery
def test_exclude_leaves_a_layer_untouched():
    torch.manual_seed(8)
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc = KFAC(model, fisher="exact", kl_clip=None, exclude=["2"])
    assert pc.layers == {"0": "linear"}
    raw = _step(model, pc, torch.randn(5, 4, dtype=D64), torch.randint(0, 3, (5,)))
    assert torch.equal(model[2].weight.grad, raw["2.weight"]) and torch.equal(model[2].bias.grad, raw["2.bias"])
    assert not torch.equal(model[0].weight.grad, raw["0.weight"])
    assert pc.factors("0")[0] is not None


def test_a_recorded_layer_that_does_not_feed_the_logits_gets_no_statistics():
    torch.manual_seed(9)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux, self.out = nn.Linear(3, 4), nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, x):
            self.aux_out = self.aux(x)  # used by an auxiliary loss only
            return self.out(torch.tanh(self.body(x)))

    model = TwoHeads().to(D64)
    pc = KFAC(model, fisher="exact", kl_clip=None)
    assert pc.layers == {"body": "linear", "aux": "linear", "out": "linear"}
    raw = _step(model, pc, torch.randn(5, 3, dtype=D64), torch.tensor([0, 1, 1, 0, 1]),
                extra_loss=lambda m: (m.aux_out**2).mean())
    assert pc.factors("aux") == (None, None)
    assert torch.equal(model.aux.weight.grad, raw["aux.weight"])
    assert pc.factors("body")[0] is not None and not torch.equal(model.body.weight.grad, raw["body.weight"])


def test_a_parameter_claimed_twice_is_an_error_and_a_spec_module_is_not_claimed_again():
    lin = nn.Linear(3, 2)
    model = nn.Sequential(lin)
    with pytest.raises(ValueError, match="parameter of layer 'b' is already preconditioned as 'a'"):
        KFAC(model, kl_clip=None, extra_layers={"a": KFACLayer(lin, lin.weight, lin.bias),
                                                 "b": KFACLayer(lin, lin.weight)})
    pc = KFAC(model, kl_clip=None, extra_layers={"mine": KFACLayer(lin, lin.weight, lin.bias)})
    assert pc.layers == {"mine": "linear"} and pc.unsupported == []


def test_a_model_without_supported_layers_is_a_no_op_and_remove_detaches_the_hooks():
    model = nn.Sequential(nn.LayerNorm(3))
    with pytest.warns(UserWarning, match="0.weight"):
        pc = KFAC(model, kl_clip=None)
    assert pc.layers == {}
    out = model(torch.randn(2, 3))
    pc.update_statistics(out)  # nothing to record, nothing raised
    out.sum().backward()
    before = model[0].weight.grad.clone()
    pc.step()
    assert torch.equal(model[0].weight.grad, before)

    lin = nn.Linear(3, 2)
    pc = KFAC(lin, fisher="exact", kl_clip=None)
    pc.remove()
    with pytest.raises(RuntimeError, match="no layer was recorded"):
        pc.update_statistics(lin(torch.randn(2, 3)))


def test_saturated_softmax_has_zero_G_and_a_finite_update():
    # Logits so far apart that softmax is exactly one-hot in float64: the exact Fisher, hence G, is 0,
    # pi falls back to 1 and the update is the gradient through (A + sqrt(l) I)^-1 and 1/sqrt(l).
    lin = nn.Linear(2, 2).to(D64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1e4, 0.0], [-1e4, 0.0]]))
        lin.bias.zero_()
    x = torch.tensor([[1.0, 0.5], [2.0, -0.5]], dtype=D64)
    damping = 0.04
    pc = KFAC(lin, fisher="exact", kl_clip=None, damping=damping)
    out = lin(x)
    pc.update_statistics(out)
    lin.zero_grad()
    (out**2).mean().backward()  # a loss with a non-zero gradient (the CE one is 0 here)
    g = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1).clone()
    pc.step()
    A, G = pc.factors("")
    assert torch.equal(G, torch.zeros(2, 2, dtype=D64))
    r = math.sqrt(damping)
    expected = g / r @ torch.linalg.inv(A + r * torch.eye(3, dtype=D64))
    torch.testing.assert_close(torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1), expected,
                               rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- state
def _assert_same_state(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("cls", [KFAC, DiagonalFisher])
def test_state_round_trip_continues_identically_through_a_refresh(cls):
    torch.manual_seed(10)
    xs = [torch.randn(6, 4, dtype=D64) for _ in range(8)]
    ys = [torch.randint(0, 3, (6,)) for _ in range(8)]
    kwargs = {"fisher": "exact", "lr": 0.1, "kl_clip": 1e-2, "ema_decay": 0.6}
    if cls is KFAC:
        kwargs["update_freq"] = 3
    model = _mlp()
    pc = cls(model, **kwargs)
    for i in range(4):
        _step(model, pc, xs[i], ys[i])
    clone = _mlp()
    clone.load_state_dict(model.state_dict())
    pc2 = cls(clone, **kwargs)
    pc2.load_state_dict(pc.state_dict())
    assert pc2.steps == pc.steps == 4
    _assert_same_state(pc2.state_dict(), pc.state_dict())  # load then save gives back what was saved
    for i in range(4, 8):  # through step 6, which refreshes from the restored moving averages
        _step(model, pc, xs[i], ys[i])
        _step(clone, pc2, xs[i], ys[i])
        for a, b in zip(model.parameters(), clone.parameters(), strict=True):
            assert torch.equal(a.grad, b.grad), i


def test_load_state_dict_converts_dtype_and_non_strict_ignores_other_layers():
    torch.manual_seed(11)
    model = _mlp()
    pc = KFAC(model, fisher="exact", kl_clip=None)
    _step(model, pc, torch.randn(5, 4, dtype=D64), torch.randint(0, 3, (5,)))
    state = pc.state_dict()
    assert state["kind"] == "KFAC" and state["steps"] == 1 and state["fisher"] == "exact"
    single = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))  # float32, same layer names
    pc32 = KFAC(single, fisher="exact", kl_clip=None)
    pc32.load_state_dict(state)
    A32, G32 = pc32.factors("0")
    assert A32.dtype == torch.float32 and G32.dtype == torch.float32
    torch.testing.assert_close(A32, pc.factors("0")[0].float())
    # non-strict: an unknown layer in the state is skipped, a missing one keeps its fresh state
    partial = {**state, "layers": {"9": state["layers"]["2"], "0": state["layers"]["0"]}}  # unknown first
    fresh = KFAC(_mlp(), fisher="exact", kl_clip=None)
    with pytest.raises(KeyError, match=r"missing \['2'\], unexpected \['9'\]"):
        fresh.load_state_dict(partial)
    fresh.load_state_dict(partial, strict=False)
    assert torch.equal(fresh.factors("0")[0], pc.factors("0")[0]) and fresh.factors("2") == (None, None)
    # a state without "kind" (written before it was recorded) is accepted; another class's is refused by name
    legacy = {k: v for k, v in state.items() if k != "kind"}
    again = KFAC(_mlp(), fisher="exact", kl_clip=None)
    again.load_state_dict(legacy)
    assert torch.equal(again.factors("2")[1], pc.factors("2")[1])
    with pytest.raises(ValueError, match=r"^state of a KFAC cannot be loaded into a DiagonalFisher$"):
        DiagonalFisher(_mlp(), fisher="exact", kl_clip=None).load_state_dict(state)


# --------------------------------------------------------------------------- damped inverses
def _load_factors(pc, name, A, G):
    """Put given factors into a preconditioner through its public state (refresh due at the next step)."""
    state = pc.state_dict()
    state["layers"][name] = {"ema": {"A": A, "G": G}, "cache": {}, "pi": 1.0, "damping": None}
    pc.load_state_dict(state)


def test_factored_inverse_uses_the_symmetric_part_and_leaves_the_factors_unchanged():
    lin = nn.Linear(2, 2, bias=False).to(D64)
    pc = KFAC(lin, fisher="exact", kl_clip=None, damping=0.09, update_freq=1)
    # slightly asymmetric factors (as float round-off leaves them); only their symmetric part is a Fisher
    A = torch.tensor([[2.0, 0.7], [0.3, 1.0]], dtype=D64)
    G = torch.tensor([[1.0, -0.2], [0.4, 3.0]], dtype=D64)
    _load_factors(pc, "", A, G)
    grad = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=D64)
    lin.weight.grad = grad.clone()
    pc.step()
    sym_A, sym_G = 0.5 * (A + A.T), 0.5 * (G + G.T)
    pi, r = math.sqrt((A.trace() / 2) / (G.trace() / 2)), 0.3
    inv_A = torch.linalg.inv(sym_A + pi * r * torch.eye(2, dtype=D64))
    inv_G = torch.linalg.inv(sym_G + r / pi * torch.eye(2, dtype=D64))
    torch.testing.assert_close(lin.weight.grad, inv_G @ grad @ inv_A, rtol=1e-12, atol=1e-14)
    assert torch.equal(pc.factors("")[0], A) and torch.equal(pc.factors("")[1], G)  # damping not added in place


def test_eigen_mode_symmetrises_and_clamps_negative_eigenvalues():
    lin = nn.Linear(2, 2, bias=False).to(D64)
    damping = 0.1
    pc = KFAC(lin, fisher="exact", kl_clip=None, damping=damping, damping_mode="eigen", update_freq=1)
    # A has eigenvalues 3 and -1 (an indefinite factor: round-off of a rank-deficient one, exaggerated)
    A = torch.tensor([[1.0, 2.5], [1.5, 1.0]], dtype=D64)
    G = torch.diag(torch.tensor([1.0, 3.0], dtype=D64))
    _load_factors(pc, "", A, G)
    grad = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=D64)
    lin.weight.grad = grad.clone()
    pc.step()
    dA, QA = torch.linalg.eigh(0.5 * (A + A.T))
    assert dA.min() < -0.5
    dA = dA.clamp_min(0.0)
    dG = G.diagonal()
    expected = (grad @ QA / (dG[:, None] * dA[None, :] + damping)) @ QA.T
    torch.testing.assert_close(lin.weight.grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("damping_mode", "message"), [
    ("factored", "K-FAC could not factorise a damped curvature factor even in float64"),
    ("eigen", "K-FAC factor eigendecomposition failed in float64"),
])
def test_non_finite_factors_fail_clearly_in_float64(damping_mode, message):
    lin = nn.Linear(2, 2, bias=False).to(D64)
    pc = KFAC(lin, fisher="exact", kl_clip=None, damping_mode=damping_mode, update_freq=1)
    A = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=D64)
    _load_factors(pc, "", A, torch.eye(2, dtype=D64))
    lin.weight.grad = torch.ones(2, 2, dtype=D64)
    with pytest.raises(torch.linalg.LinAlgError, match=f"^{message}"):
        pc.step()
    assert pc.float64_retries == 0  # already float64: no retry counted


def test_a_zero_input_factor_keeps_pi_at_one():
    """``pi = sqrt(mean diag A / mean diag G)`` needs both means positive; an all-zero ``A`` (a bias-free layer
    fed zeros) keeps ``pi = 1`` and gets the plain damped inverse ``(0 + sqrt(lambda) I)^-1``."""
    model = nn.Linear(3, 2, bias=False).to(D64)
    pc = KFAC(model, fisher="exact", damping=1e-2, kl_clip=None)
    _step(model, pc, torch.zeros(5, 3, dtype=D64), torch.tensor([0, 1, 0, 1, 0]))
    st = pc._state[""]
    assert st.pi == 1.0
    torch.testing.assert_close(st.cache["inv_A"], torch.eye(3, dtype=D64) / math.sqrt(1e-2), rtol=1e-12, atol=0)
    assert torch.equal(model.weight.grad, torch.zeros(2, 3, dtype=D64))
