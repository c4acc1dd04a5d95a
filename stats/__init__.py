"""Experiment statistics for the outer loop: pure functions of per-arm sufficient statistics.

sums (SufficientStats, RatioStats) -> estimators (Welch, relative lift, CUPED, ratio metrics)
-> sequential (mSPRT always-valid p-values, normal-mixture confidence sequences) -> srm, multiple,
guardrails -> decision (promote | rollback | continue | inconclusive). numpy/scipy only, no I/O.
"""

from .decision import ArmDecision, Decision, DecisionPolicy, DecisionState, Metric, decide
from .estimators import (Effect, analyse, compare, compare_ratio, cuped, cuped_theta, difference_in_means,
                         relative_lift)
from .guardrails import Breach, Guardrail, GuardrailResult, HardLimit, hard_limit_breaches, non_inferiority
from .multiple import adjust, benjamini_hochberg, bonferroni, holm
from .sequential import (SequentialState, confidence_sequence, msprt_log_lr, msprt_p_value,
                         planned_information, rho_for_information, update)
from .srm import SRM_THRESHOLD, SRMResult, srm_check
from .sums import InsufficientData, RatioStats, SufficientStats

__all__ = [
    "ArmDecision", "Breach", "Decision", "DecisionPolicy", "DecisionState", "Effect", "Guardrail",
    "GuardrailResult", "HardLimit", "InsufficientData", "Metric", "RatioStats", "SRMResult", "SRM_THRESHOLD",
    "SequentialState", "SufficientStats", "adjust", "analyse", "benjamini_hochberg", "bonferroni", "compare",
    "compare_ratio", "confidence_sequence", "cuped", "cuped_theta", "decide", "difference_in_means",
    "hard_limit_breaches", "holm", "msprt_log_lr", "msprt_p_value", "non_inferiority", "planned_information",
    "relative_lift", "rho_for_information", "srm_check", "update",
]
