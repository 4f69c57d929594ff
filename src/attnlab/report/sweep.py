"""A sweep's report (``attnlab bench tasks``, ``attnlab train``): the per-mechanism table and the mean curves.

A single run (one mechanism, one seed: ``attnlab train``) is titled for that run; a comparison
says how many mechanisms and seeds it compares.
"""

from __future__ import annotations

from attnlab.report import figures
from attnlab.report.page import Report, Table, Text

__all__ = ["build", "render", "title"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _runs(summary: list[dict]) -> tuple[list[str], list[int]]:
    """The mechanisms and the seeds the sweep ran (from its rows, as every kind of sweep records them)."""
    return [x["mechanism"] for x in summary], sorted({seed for x in summary for seed in x["seeds"]})


def title(task: str, summary: list[dict]) -> str:
    """The report's title: the run (one mechanism, one seed) or the comparison.

    Example:
        >>> title("mqar", [{"mechanism": "mha", "seeds": [0]}])
        'Training run: mha on mqar, seed 0'
        >>> title("mqar", [{"mechanism": "mha", "seeds": [0, 1]}, {"mechanism": "linear", "seeds": [0, 1]}])
        'Task comparison on mqar: 2 mechanisms × 2 seeds'
    """
    mechanisms, seeds = _runs(summary)
    if len(mechanisms) == 1 and len(seeds) == 1:
        return f"Training run: {mechanisms[0]} on {task}, seed {seeds[0]}"
    return f"Task comparison on {task}: {_plural(len(mechanisms), 'mechanism')} × {_plural(len(seeds), 'seed')}"


def build(result) -> Report:
    """The :class:`~attnlab.report.page.Report` of a :class:`attnlab.train.SweepResult`."""
    meta, s = result.meta, result.meta["settings"]
    v = meta["versions"]
    mechanisms, seeds = _runs(result.summary)
    single = len(mechanisms) == 1 and len(seeds) == 1
    r = Report(
        title(s.get("task", "a task"), result.summary),
        [
            f"{meta['created']} · {meta['wall_s']} s · executor {s.get('executor')} ({s.get('workers')} workers) · "
            f"attnlab {v['attnlab']}, torch {v['torch']} · {v.get('machine', '')}"
        ],
    )
    sec = r.section("Final test metric" if single else "Mechanisms compared", "summary")
    sec.add(Table(result.rows(), result.HEADER))
    if single:
        what = "The final test metric of the run (one seed: no confidence interval)."
    else:
        what = (
            "Final test metric: mean over seeds ± half-width of the two-sided 95% t-interval. Every mechanism saw the same batches "
            "for a given seed, the same test set, and the same steps, batch size, learning rate and schedule."
        )
    if meta.get("target") is not None:
        what += f" Training stopped at the first evaluation whose test metric reached {meta['target']}; steps to target average the runs that reached it."
    sec.add(Text(what))
    band = "" if single else " (mean over seeds, 95% CI band)"

    def series(key):
        return [figures.Series(m, c[key]["steps"], c[key]["mean"], c[key]["low"], c[key]["high"]) for m, c in result.curves.items()]

    curves = r.section("Curves", "curves")
    curves.add(figures.lines("test_metric", f"test metric{band}", series("test_metric"), x_title="step", y_title="test metric"))
    curves.add(
        figures.lines(
            "train_loss",
            f"training loss{band}",
            series("train_loss"),
            x_title="step",
            y_title="training loss (cross-entropy in nats; MSE for real-valued targets)",
        )
    )
    r.section("Settings", "settings").add(Table([[k, v] for k, v in s.items()]))
    return r


def render(result, *, standalone: bool = True) -> str:
    """The HTML report of a :class:`attnlab.train.SweepResult`."""
    return build(result).html(standalone=standalone)
