"""Train tiny models on synthetic tasks, and compare mechanisms fairly over seeds.

- :func:`train`: one model on one task; curves, early stop at a target, resumable checkpoints.
- :func:`sweep`: every mechanism × every seed, on a process pool, Ray or serially; a table of
  the final test metric, mean ± 95% CI, and a self-contained HTML report.
- Papers' training recipes, each through :func:`train` unchanged: :mod:`attnlab.train.ssa`
  (SSA, paper 53), :mod:`attnlab.train.vcycle` (V-cycle, paper 72), :mod:`attnlab.train.distill`
  (EchoAtt KD and NMI-HAD, papers 14 and 37), :mod:`attnlab.train.guided` (guiding loss, paper 43).

    >>> from attnlab.train import sweep                                  # doctest: +SKIP
    >>> r = sweep("mqar", {}, ["mha", "linear"], seeds=5, train_options={"steps": 2000})  # doctest: +SKIP
    >>> print(r.table()); r.save("results.json"); r.report("report.html")  # doctest: +SKIP
"""

from attnlab.train.loop import Step, TrainResult, lr_at, train
from attnlab.train.result import SweepResult
from attnlab.train.sweep import build_model, run_one, sweep

__all__ = ["Step", "SweepResult", "TrainResult", "build_model", "lr_at", "run_one", "sweep", "train"]
