"""The Offline Agent (the paper's fast inner loop): journal, personas, prompts, proposers, budgets,
the sandboxed candidate runner and the evolve loop.

Python API (no heavy imports here; import the modules):

    from cambrian.agents.settings import load_evolve_config, parse_evolve_config
    from cambrian.agents.evolve import run_evolution, bundle_path
    result = run_evolution(parse_evolve_config({"data_dir": "data", "run_dir": "runs/x"}))
    result.winners        # hypotheses that beat the baseline beyond the noise floor, best first
    result.best           # {persona: best-scoring hypothesis}
    bundle_path(result.run_dir, result.winners[0])   # its trained model bundle

    from cambrian.agents.journal import Journal
    Journal(run_dir).record_online(hid, {"return_rate": 0.61}, matured=True)   # outer loop -> journal
"""
