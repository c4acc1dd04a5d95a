"""Experiment statistics for the outer loop: pure functions of per-arm sufficient statistics.

sums (SufficientStats, RatioStats) -> estimators (Welch, relative lift, CUPED, ratio metrics)
-> sequential (mSPRT always-valid p-values, normal-mixture confidence sequences) -> srm, multiple,
guardrails -> decision (promote | rollback | continue | inconclusive). numpy/scipy only, no I/O.
"""

# Lazy (PEP 562): `cambrian.stats.noise` is imported by the operator for every Hypothesis, and must not
# pull in scipy.stats (60 MiB of the operator's RSS) through this package's decision machinery; the
# names below are imported from their module on first use.
_WHERE = {
    "decision": ("ArmDecision", "Decision", "DecisionPolicy", "DecisionState", "Metric", "decide"),
    "estimators": ("Effect", "analyse", "compare", "compare_ratio", "cuped", "cuped_theta", "difference_in_means",
                   "relative_lift"),
    "guardrails": ("Breach", "Guardrail", "GuardrailResult", "HardLimit", "hard_limit_breaches", "non_inferiority"),
    "multiple": ("adjust", "benjamini_hochberg", "bonferroni", "holm"),
    "sequential": ("SequentialState", "confidence_sequence", "msprt_log_lr", "msprt_p_value", "planned_information",
                   "rho_for_information", "update"),
    "srm": ("SRM_THRESHOLD", "SRMResult", "least_evidence_weights", "srm_check"),
    "sums": ("InsufficientData", "RatioStats", "SufficientStats"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ArmDecision", "Breach", "Decision", "DecisionPolicy", "DecisionState", "Effect", "Guardrail",
    "GuardrailResult", "HardLimit", "InsufficientData", "Metric", "RatioStats", "SRMResult", "SRM_THRESHOLD",
    "SequentialState", "SufficientStats", "adjust", "analyse", "benjamini_hochberg", "bonferroni", "compare",
    "compare_ratio", "confidence_sequence", "cuped", "cuped_theta", "decide", "difference_in_means",
    "hard_limit_breaches", "holm", "least_evidence_weights", "msprt_log_lr", "msprt_p_value", "non_inferiority",
    "planned_information", "relative_lift", "rho_for_information", "srm_check", "update",
]
