"""The optimiser factory: groups and roles, AdamW/SGD equivalence, resume, per-group LR, geoopt traps."""

from __future__ import annotations

import copy
import io

import geoopt
import pytest
import torch
from nets import TinyBackbone
from torch import nn

from lpc_geom.models.base import Classifier, HeadOutput
from lpc_geom.models.geometry import PoincareHead, SphereHead, StiefelHead, check_on_manifold
from lpc_geom.optim import (
    KFAC_OPTIMIZERS,
    OPTIMIZERS,
    RiemannianAdamW,
    RiemannianMomentumSGD,
    build_optimizer,
    optimizer_names,
    parameter_groups,
    resolve_optimizer,
)

IN, D, K = 10, 6, 4


class EuclideanLPCHead(nn.Module):
    """The paper's head, written here so that the test does not depend on lpc_geom.models.heads."""

    def __init__(self, in_dim: int, latent_dim: int, num_classes: int):
        super().__init__()
        self.penultimate = nn.Linear(in_dim, latent_dim)
        self.classifier = nn.Linear(latent_dim, num_classes, bias=False)

    def forward(self, h):
        z = self.penultimate(h)
        return HeadOutput(self.classifier(z), z, (z * z).sum(dim=-1))


GEOMETRY_HEADS = {
    "sphere": lambda: SphereHead(IN, D, K, within_class=1.0),
    "poincare-learnable-c-manifold-points": lambda: PoincareHead(
        IN, D, K, c=0.7, learnable_c=True, class_points="manifold"
    ),
    "poincare-prototype": lambda: PoincareHead(IN, D, K, classifier="prototype"),
    "stiefel": lambda: StiefelHead(IN, D, K),
}


def euclidean_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(TinyBackbone(IN, IN), EuclideanLPCHead(IN, D, K))


def geometry_model(name: str, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(TinyBackbone(IN, IN), GEOMETRY_HEADS[name]())


def data(n: int = 64):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % K
    x = 2.0 * torch.randn(K, IN, generator=g)[y] + torch.randn(n, IN, generator=g)
    return x, y


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0, growth: float = 1.03):
    """LPC-style steps: cross-entropy + gamma * energy, gamma growing geometrically from 1e-2."""
    x, y = data()
    x = x.to(next(model.parameters()).dtype)
    for step in range(start, start + steps):
        gamma = 1e-2 * growth**step
        out = model(x)
        loss = nn.functional.cross_entropy(out.logits, y) + gamma * out.energy.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --------------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_group_has_a_role_and_the_classifier_is_exactly_the_head_classifier(name):
    model = euclidean_model()
    opt = build_optimizer(model, name)
    assert all(group["role"] in ("classifier", "body") for group in opt.param_groups)
    in_groups = [p for group in opt.param_groups for p in group["params"]]
    assert sorted(map(id, in_groups)) == sorted(id(p) for p in model.parameters())
    classifier = [p for g in opt.param_groups if g["role"] == "classifier" for p in g["params"]]
    assert [id(p) for p in classifier] == [id(p) for p in model.head.classifier.parameters()]
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)


def test_geometry_groups_kinds_and_decay():
    sphere = geometry_model("sphere")
    groups = {(g["role"], g["kind"]): g for g in parameter_groups(sphere, weight_decay=0.1)}
    assert [id(p) for p in groups[("classifier", "manifold")]["params"]] == [id(sphere.head.classifier.weight)]
    assert groups[("classifier", "manifold")]["weight_decay"] == 0.0
    assert groups[("body", "euclidean")]["weight_decay"] == 0.1

    ball = geometry_model("poincare-learnable-c-manifold-points")
    groups = {(g["role"], g["kind"]): g for g in parameter_groups(ball, weight_decay=0.1)}
    assert [id(p) for p in groups[("body", "curvature")]["params"]] == [id(ball.head.manifold.isp_c)]
    assert groups[("body", "curvature")]["weight_decay"] == 0.0
    assert [id(p) for p in groups[("classifier", "manifold")]["params"]] == [
        id(ball.head.classifier.offsets.points)
    ]

    stiefel = geometry_model("stiefel")
    groups = {(g["role"], g["kind"]): g for g in parameter_groups(stiefel, weight_decay=0.1)}
    assert [id(p) for p in groups[("body", "manifold")]["params"]] == [id(stiefel.head.projection.weight)]


def test_unknown_names_and_euclidean_optimizers_on_manifolds_are_refused():
    with pytest.raises(ValueError, match="accepted optimizers: adamw, riemannian-adam, sgd, riemannian-sgd"):
        build_optimizer(euclidean_model(), "lamb")
    for name in ("adamw", "sgd"):
        with pytest.raises(ValueError, match=r"head\.classifier\.weight.*riemannian-adam"):
            build_optimizer(geometry_model("sphere"), name)
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer(nn.Identity(), "adamw")


def test_the_registry_is_the_one_list_of_names_and_builds_what_it_names():
    assert tuple(OPTIMIZERS) == ("adamw", "riemannian-adam", "sgd", "riemannian-sgd")
    assert optimizer_names() == ("auto", *OPTIMIZERS, "kfac-sgd", "kfac-adam", "kfac-riemannian")
    assert dict(KFAC_OPTIMIZERS) == {"kfac-sgd": "sgd", "kfac-adam": "adamw", "kfac-riemannian": "riemannian-adam"}
    assert all(base in OPTIMIZERS for base in KFAC_OPTIMIZERS.values())
    assert {n for n, spec in OPTIMIZERS.items() if spec.riemannian} == {"riemannian-adam", "riemannian-sgd"}
    built = {name: type(build_optimizer(euclidean_model(), name)) for name in OPTIMIZERS}
    assert built == {"adamw": torch.optim.AdamW, "riemannian-adam": RiemannianAdamW, "sgd": torch.optim.SGD,
                     "riemannian-sgd": RiemannianMomentumSGD}
    with pytest.raises(TypeError):
        OPTIMIZERS["lamb"] = OPTIMIZERS["adamw"]  # read-only: names are added here, in the factory


def test_resolve_optimizer_maps_every_name_onto_a_base_and_the_kfac_flag():
    euclidean, sphere = euclidean_model(), geometry_model("sphere")
    assert resolve_optimizer("auto", euclidean) == ("adamw", False)
    assert resolve_optimizer("auto", sphere) == ("riemannian-adam", False)
    for name in OPTIMIZERS:
        assert resolve_optimizer(name, sphere) == (name, False)
    assert resolve_optimizer("kfac-sgd", euclidean) == ("sgd", True)
    assert resolve_optimizer("kfac-adam", sphere) == ("adamw", True)
    assert resolve_optimizer("kfac-riemannian", euclidean) == ("riemannian-adam", True)
    with pytest.raises(ValueError, match=r"accepted optimizers: auto, adamw, .*kfac-riemannian"):
        resolve_optimizer("kfac-lamb", euclidean)


# --------------------------------------------------------------------------------------------------
# Equivalence with torch on Euclidean models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["riemannian-adam", "adamw"])
def test_adam_variants_match_torch_adamw_on_a_euclidean_model(name):
    # 300 LPC steps with gamma growing to ~7e1: geoopt's own Adam update differed from AdamW by 5e-7
    # after 100 steps and 4e-2 after 500 (rounding amplified); the factory's is bitwise AdamW (measured 0).
    model, reference = euclidean_model(), euclidean_model()
    train(model, build_optimizer(model, name, lr=1e-2, weight_decay=5e-3), 300)
    train(reference, torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=5e-3), 300)
    assert max_difference(model, reference) <= 1e-6


def test_riemannian_sgd_matches_torch_sgd_including_the_first_momentum_step():
    # float64, so that the one-step displacements are measured without cancellation; no decay, under
    # which geoopt's first step is exactly (1 + momentum) times torch's.
    model, reference, plain_geoopt = (euclidean_model().double() for _ in range(3))
    ours = build_optimizer(model, "riemannian-sgd", lr=1e-2, momentum=0.9, weight_decay=0.0)
    torch_sgd = torch.optim.SGD(reference.parameters(), lr=1e-2, momentum=0.9)
    geoopt_sgd = geoopt.optim.RiemannianSGD(plain_geoopt.parameters(), lr=1e-2, momentum=0.9)
    start = [p.detach().clone() for p in reference.parameters()]
    for m, o in ((model, ours), (reference, torch_sgd), (plain_geoopt, geoopt_sgd)):
        train(m, o, 1)
    torch_step = [p.detach() - s for p, s in zip(reference.parameters(), start, strict=True)]
    geoopt_step = [p.detach() - s for p, s in zip(plain_geoopt.parameters(), start, strict=True)]
    torch.testing.assert_close(geoopt_step, [1.9 * s for s in torch_step])
    assert max_difference(model, reference) <= 1e-15
    model, reference = euclidean_model(), euclidean_model()
    ours = build_optimizer(model, "riemannian-sgd", lr=1e-2, momentum=0.9, weight_decay=5e-3)
    torch_sgd = torch.optim.SGD(reference.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-3)
    train(model, ours, 200, growth=1.01)
    train(reference, torch_sgd, 200, growth=1.01)
    assert max_difference(model, reference) <= 1e-6  # float32 rounding only (measured 1.2e-7)


def test_sgd_is_torch_sgd():
    model, reference = euclidean_model(), euclidean_model()
    opt = build_optimizer(model, "sgd", lr=1e-2, momentum=0.9, weight_decay=5e-4)
    assert type(opt) is torch.optim.SGD
    train(model, opt, 50, growth=1.0)
    train(reference, torch.optim.SGD(reference.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4), 50, 0, 1.0)
    assert max_difference(model, reference) == 0.0


# --------------------------------------------------------------------------------------------------
# Resume, learning rates, hooks, gradients
# --------------------------------------------------------------------------------------------------


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("head", sorted(GEOMETRY_HEADS))
@pytest.mark.parametrize("name", ["riemannian-adam", "riemannian-sgd"])
def test_resumed_training_is_identical(head, name):
    lr = 1e-2 if name == "riemannian-adam" else 1e-3
    model = geometry_model(head)
    opt = build_optimizer(model, name, lr=lr, stabilize=3)
    train(model, opt, 7)
    checkpoint = _roundtrip({"model": model.state_dict(), "optimizer": opt.state_dict()})
    train(model, opt, 8, start=7)

    resumed = geometry_model(head, seed=99)
    resumed_opt = build_optimizer(resumed, name, lr=lr, stabilize=3)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    if isinstance(resumed_opt, RiemannianAdamW):
        steps = [s["step"] for p, s in resumed_opt.state.items() if isinstance(p, geoopt.ManifoldParameter)]
        assert steps and all(type(s) is int for s in steps)
    train(resumed, resumed_opt, 8, start=7)
    assert max_difference(model, resumed) == 0.0
    check_on_manifold(resumed)


def test_learning_rates_are_changed_per_group():
    model = geometry_model("poincare-learnable-c-manifold-points")
    opt = build_optimizer(model, "riemannian-adam", lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1.0)
    for group in opt.param_groups:
        if group["role"] == "body":
            group["lr"] = 0.0
    body = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.classifier")}
    classifier = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("head.classifier")}
    train(model, opt, 3)
    scheduler.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in body.items())
    assert all(not torch.equal(params[n], v) for n, v in classifier.items())


@pytest.mark.parametrize("name", ["riemannian-adam", "riemannian-sgd"])
def test_step_leaves_gradients_alone_and_runs_hooks_once(name):
    geoopt.optim.RiemannianAdam([nn.Parameter(torch.zeros(1))])  # makes torch wrap the parent's step too
    geoopt.optim.RiemannianSGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    model = geometry_model("stiefel")
    opt = build_optimizer(model, name, lr=1e-2, weight_decay=0.1)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append(1))
    x, y = data()
    out = model(x)
    (nn.functional.cross_entropy(out.logits, y) + out.energy.mean()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert len(calls) == 1
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))


def test_manifold_parameters_are_never_decayed():
    model = geometry_model("poincare-learnable-c-manifold-points")
    with torch.no_grad():
        model.head.classifier.offsets.points.fill_(0.3)
    opt = build_optimizer(model, "riemannian-adam", lr=1e-2)
    for group in opt.param_groups:
        group["weight_decay"] = 0.5  # even if a user asks for it
    points = model.head.classifier.offsets.points
    before = points.detach().clone()
    points.grad = torch.zeros_like(points)
    opt.step()
    assert torch.equal(points, before)
    ordinary = model.head.projection.weight
    assert ordinary.grad is None  # untouched without a gradient, as in torch.optim.AdamW


def test_factory_model_deepcopy_and_optimizer_state_are_independent():
    model = geometry_model("sphere")
    opt = build_optimizer(model, "riemannian-adam")
    train(model, opt, 2)
    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin, "riemannian-adam")
    # In-process, torch's load_state_dict shares the state tensors (same dtype and device): copy them.
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, 3, start=2)
    train(twin, twin_opt, 3, start=2)
    assert max_difference(model, twin) == 0.0
