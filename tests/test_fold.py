"""Folding evaluation-mode batch norms into convolutions: outputs and input gradients against the unfolded model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.models import build_model, fold_batch_norms, resnet18
from lpc_geom.models.fold import has_foldable_batch_norms
from lpc_geom.models.norm import BatchNorm1d, BatchNorm2d
from lpc_geom.models.resnet import Bottleneck, ResNet


def _randomise_statistics(model: nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine parameters far from their initial values (0, 1), as after training."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator))
                module.running_var.copy_(torch.rand(c, generator=generator) * 3 + 0.1)
                if module.weight is not None:
                    module.weight.copy_(torch.randn(c, generator=generator))
                    module.bias.copy_(torch.randn(c, generator=generator))


def _output_and_input_gradient(model: nn.Module, x: torch.Tensor, weights: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out = out if isinstance(out, torch.Tensor) else out.logits
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grad


def _assert_close(folded, reference, dtype):
    scale = reference.abs().max().clamp_min(1.0)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert float((folded - reference).abs().max() / scale) < tolerance


@settings(max_examples=25, deadline=None)
@given(dims=st.sampled_from([1, 2]), c_in=st.integers(1, 3), c_out=st.integers(1, 6), kernel=st.sampled_from([1, 3]),
       stride=st.integers(1, 2), padding=st.integers(0, 2), bias=st.booleans(), affine=st.booleans(),
       groups=st.sampled_from([1, 2]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_a_folded_conv_bn_sequence_equals_the_unfolded_one(dims, c_in, c_out, kernel, stride, padding, bias, affine,
                                                           groups, dtype, seed):
    c_in, c_out = c_in * groups, c_out * groups
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias,
                                                   groups=groups)
    bn = (BatchNorm1d if dims == 1 else BatchNorm2d)(c_out, affine=affine)
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(conv, bn, nn.SiLU()).to(dtype)
    _randomise_statistics(model, generator)
    model.eval()
    x = torch.randn((4, c_in) + (7,) * dims, generator=generator, dtype=dtype)
    folded = fold_batch_norms(model)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    out = folded(x)
    weights = torch.randn(out.shape, generator=generator, dtype=dtype)
    reference, reference_grad = _output_and_input_gradient(model, x, weights)
    result, grad = _output_and_input_gradient(folded, x, weights)
    _assert_close(result, reference, dtype)
    _assert_close(grad, reference_grad, dtype)
    assert isinstance(model[1], BatchNorm1d | BatchNorm2d)  # the model keeps its own layers
    assert (model[0].bias is None) == (not bias)


@pytest.mark.parametrize("geometry", ["euclidean", "sphere", "poincare", "stiefel"])
def test_folded_resnet_classifiers_match_in_every_geometry(geometry):
    torch.manual_seed(0)
    model = build_model("resnet18", "LPC", (1, 40), 10, latent_dim=16, head=geometry, width=4)
    _randomise_statistics(model, torch.Generator().manual_seed(1))
    model.eval()
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # the model keeps its own
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(16, 10, generator=torch.Generator().manual_seed(3))
    reference, reference_grad = _output_and_input_gradient(model, x, weights)
    result, grad = _output_and_input_gradient(folded, x, weights)
    _assert_close(result, reference, torch.float32)
    _assert_close(grad, reference_grad, torch.float32)
    with torch.no_grad():
        assert torch.allclose(folded(x).latents, model(x).latents, rtol=1e-5, atol=1e-5)


def test_folded_bottleneck_resnet_2d_matches_in_double_precision():
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (1, 1, 1, 1), in_channels=3, width=4).double()
    _randomise_statistics(model, torch.Generator().manual_seed(4))
    model.eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    weights = torch.randn(3, model.out_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    folded = fold_batch_norms(model)
    reference, reference_grad = _output_and_input_gradient(model, x, weights)
    result, grad = _output_and_input_gradient(folded, x, weights)
    _assert_close(result, reference, torch.float64)
    _assert_close(grad, reference_grad, torch.float64)


def test_folding_leaves_the_model_its_modes_gradients_and_hooks():
    model = resnet18(in_channels=1, width=4, dims=1)
    model.train()
    model.layer1[0].bn1.eval()  # a mixed state stays as it was
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    calls = []
    model.layer2[0].conv1.register_forward_hook(lambda *args: calls.append(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    x = torch.randn(8, 1, 40)
    folded(x)
    assert calls == []  # the copy has no hooks
    assert all(not m.training for m in folded.modules())
    assert model.training and not model.layer1[0].bn1.training and model.layer1[0].bn2.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.requires_grad and torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm1d) and model.layer1[0].conv1.bias is None
    assert not any(p.requires_grad for n, p in folded.named_parameters() if n.endswith("conv1.bias"))
    model(x)
    assert calls == [1]


def test_unfoldable_batch_norms_stay():
    # no running statistics: evaluation mode normalises with the batch's own statistics
    no_stats = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3, track_running_stats=False))
    # a batch norm after a linear layer: its channel axis depends on the input's rank
    after_linear = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    # a convolution used twice: folding one use would change the other
    shared_conv = nn.Conv1d(3, 3, 1)
    shared = nn.Sequential(shared_conv, nn.BatchNorm1d(3), shared_conv)
    # the batch norm does not follow the convolution directly
    apart = nn.Sequential(nn.Conv1d(2, 3, 3), nn.SiLU(), nn.BatchNorm1d(3))
    for model in (no_stats, after_linear, shared, apart):
        assert not has_foldable_batch_norms(model)
        folded = fold_batch_norms(model)
        assert sum(isinstance(m, nn.BatchNorm1d) for m in folded.modules()) == 1
        x = torch.randn(5, 4) if model is after_linear else torch.randn(5, 2 if model is not shared else 3, 9)
        with torch.no_grad():
            assert torch.equal(folded(x), model.eval()(x))
    assert has_foldable_batch_norms(nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3)))


def test_a_model_with_hooks_is_evaluated_as_it_is():
    from lpc_geom.analysis.robustness import robustness_report
    from lpc_geom.models.fold import has_hooks
    from lpc_geom.train.trainer import predict

    torch.manual_seed(0)
    model = build_model("resnet18", "LPC", (1, 40), 10, latent_dim=16, width=4)
    _randomise_statistics(model, torch.Generator().manual_seed(7))
    x = torch.randn(12, 40, generator=torch.Generator().manual_seed(8))
    assert not has_hooks(model)
    unhooked, _ = predict(model, x, torch.device("cpu"), torch.float32)  # folded: rounding-close
    with torch.no_grad():
        _assert_close(unhooked, model.eval()(x).logits, torch.float32)
    calls = []
    model.backbone.layer1[0].bn1.register_forward_hook(lambda *args: calls.append(1))
    assert has_hooks(model)
    hooked, _ = predict(model, x, torch.device("cpu"), torch.float32)
    assert calls  # the model's own hook ran: no folded copy
    seen = len(calls)
    robustness_report(model, x, fmn_steps=2, lipschitz=False, max_iter=3)
    assert len(calls) > seen
    _assert_close(hooked, unhooked, torch.float32)
