"""Robustness of classifiers: batched DeepFool and minimum-norm attacks, Lipschitz bounds, certified radii.

* :func:`deepfool` -- minimal L2 perturbations, as the LPC paper measured them (batched).
* :func:`fmn` -- the Fast Minimum-Norm L2 attack (Pintor et al. 2021): shorter adversarial perturbations than
  DeepFool's linear steps find, a tighter upper bound on the distance to the decision boundary (batched).
* :func:`lipschitz_upper_bound` -- certified bound on the Lipschitz constant of the logits of any model
  (module rules, and torch.fx graphs bounded node by node; extensible with :func:`register_lipschitz_rule`);
  :func:`lipschitz_lower_bound` -- empirical.
* :func:`certified_radius` / :func:`certified_accuracy` -- radii :math:`m / (\\sqrt 2 L)`.
* :func:`robustness_report` / :func:`write_robustness_json` -- one flat record per model.
"""

from lpc_geom.analysis.robustness._common import LipschitzRuleError, UnboundedLipschitzError
from lpc_geom.analysis.robustness._fx_rules import FUNCTION_RULES, FunctionCall, FunctionRule, elementwise_rule
from lpc_geom.analysis.robustness.certify import (
    certified_accuracy,
    certified_radius,
    logit_margins,
    radius_from_margins,
)
from lpc_geom.analysis.robustness.deepfool import DeepFoolResult, deepfool
from lpc_geom.analysis.robustness.fmn import FMNResult, fmn
from lpc_geom.analysis.robustness.lipschitz import (
    LIPSCHITZ_RULES,
    LayerBound,
    LipschitzBound,
    LipschitzEstimate,
    LipschitzRule,
    LipschitzWalker,
    chain_rule,
    constant_rule,
    lipschitz_lower_bound,
    lipschitz_upper_bound,
    register_lipschitz_rule,
    residual_rule,
    unbounded_rule,
)
from lpc_geom.analysis.robustness.report import (
    read_robustness_json,
    robustness_of,
    robustness_report,
    write_robustness_json,
)

__all__ = [
    "FUNCTION_RULES",
    "LIPSCHITZ_RULES",
    "DeepFoolResult",
    "FMNResult",
    "FunctionCall",
    "FunctionRule",
    "LayerBound",
    "LipschitzBound",
    "LipschitzEstimate",
    "LipschitzRule",
    "LipschitzRuleError",
    "LipschitzWalker",
    "UnboundedLipschitzError",
    "certified_accuracy",
    "certified_radius",
    "chain_rule",
    "constant_rule",
    "deepfool",
    "elementwise_rule",
    "fmn",
    "lipschitz_lower_bound",
    "lipschitz_upper_bound",
    "logit_margins",
    "radius_from_margins",
    "read_robustness_json",
    "register_lipschitz_rule",
    "residual_rule",
    "robustness_of",
    "robustness_report",
    "unbounded_rule",
    "write_robustness_json",
]
