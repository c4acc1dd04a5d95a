"""The Offline Agent (the paper's fast inner loop): journal, personas, prompts, proposers, budgets and
the sandboxed candidate runner. The loop itself is the operator's reconcile core (operator/reconcile/),
run locally by the LocalDriver (`cambrian evolve -f`) and in the cluster by the operator.

Python API (no heavy imports here; import the modules):

    from cambrian.agents.proposers import make_proposer
    from cambrian.agents.runner import RunLimits, run_candidate   # one sandboxed training run
"""
