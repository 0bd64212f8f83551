"""Reference implementations the library is checked against (tests) and timed against (benchmarks).

The LTS4 per-sample DeepFool loop, against which the batched attack is checked and timed.
"""

from __future__ import annotations

import math

import torch


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


def reference_deepfool(model, x0, candidates=10, overshoot=0.02, max_iter=50):
    """Straightforward per-sample DeepFool, as in the LTS4 reference implementation."""
    f0 = _logits(model(x0[None]))[0].detach()
    order = f0.argsort(descending=True)[:candidates]
    label = order[0]
    r_tot = torch.zeros_like(x0)
    x = x0.clone().requires_grad_(True)
    fs = _logits(model(x[None]))[0]
    k_i, loop_i = label, 0
    while k_i == label and loop_i < max_iter:
        pert, w = math.inf, torch.zeros_like(x0)
        (grad_orig,) = torch.autograd.grad(fs[order[0]], x, retain_graph=True)
        for k in range(1, len(order)):
            (cur_grad,) = torch.autograd.grad(fs[order[k]], x, retain_graph=True)
            w_k = cur_grad - grad_orig
            f_k = (fs[order[k]] - fs[order[0]]).detach()
            pert_k = float(f_k.abs() / w_k.norm())
            if pert_k < pert:
                pert, w = pert_k, w_k
        r_i = (pert + 1e-4) * w / w.norm()
        r_tot = r_tot + r_i
        x = (x0 + (1 + overshoot) * r_tot).detach().requires_grad_(True)
        fs = _logits(model(x[None]))[0]
        k_i = fs.argmax()
        loop_i += 1
    return (1 + overshoot) * r_tot, loop_i, int(label), int(k_i)
