"""Evaluation: the closed loop on the simulated CRANE-X7, its statistics and the run report.

    closed_loop  run a checkpoint and the baselines through the inference node on held-out seeds
    summary      per-episode outcomes -> success rate with a 95% interval, achieved rates
    report       report.json, report.md and the PNGs of a demo or evaluation run
"""
