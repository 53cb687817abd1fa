"""Benchmarks: task specs (spec.py, tasks/*.yaml) → data (sources.py) → instances (instances.py) → scoring
(scoring.py: log-likelihood via loglik.py, or generation + answers.py) → per-sample logs and results.json
(runner.py) → base-vs-tuned forgetting table (forgetting.py). The HELM-style views live in helm/."""
