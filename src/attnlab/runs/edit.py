"""Edits on a model: bind them, prepare them on an input, measure them (``attnlab edit``).

An edit declares what it needs (:class:`attnlab.core.Edit`'s events); the functions here give it:

- :func:`bind`: instrument the model if needed, hand each edit the sites;
- :func:`prepare`: before an edited pass, the unedited passes each edit asks for on that input
  (:meth:`~attnlab.core.Edit.input_probe`, :meth:`~attnlab.core.Edit.prepared`);
- :func:`unedited`: one pass with only an observer attached, whatever encloses it;
- :func:`run_edit`: calibrate, measure the evaluations before and after, keep the result.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attnlab.core import attach
from attnlab.core.site import Edit, Probe, Site
from attnlab.models.hf_load import input_device
from attnlab.results import EditResult, make_meta, model_meta
from attnlab.runs._checks import check_positions

__all__ = ["bind", "choose_evals", "prepare", "run_edit", "unedited"]

MAX_ROUNDS = 8  # unedited passes one edit may ask for on one input


def bind(model, edits: Sequence[Edit], *, backend: str | None = None) -> list[Site]:
    """Make ``model`` ready for ``edits``; their :meth:`~attnlab.core.Edit.validate` sees its sites.

    Instruments the model (with ``backend``, or once with the default when it is not yet); its
    hook graph applies attached edits' :meth:`~attnlab.core.Edit.sublayer` functions.

    Returns:
        The model's sites, in layer order.
    """
    from attnlab.models import hf

    if backend is not None:
        hf.instrument(model, backend=backend)
    elif not getattr(model, "_attnlab_hooks", None):
        hf.instrument(model)
    sites = hf.sites(model)
    for e in edits:
        e.validate(sites)
    return sites


def unedited(model, input_ids: Tensor, observer: Probe | Edit, *, inputs: dict | None = None) -> None:
    """One forward pass over ``input_ids`` with only ``observer`` attached (a probe, or an edit that records).

    The pass runs in a fresh context: edits and probes attached around the call stay out of it.
    A probe is told :meth:`~attnlab.core.Probe.begin` / :meth:`~attnlab.core.Probe.end` around
    the input (with no token strings). ``inputs``: the model's other inputs for the pass (a
    vision-language model's ``pixel_values`` and ``attention_mask``; an ``input_ids`` there is ignored).
    """
    ids = input_ids.to(input_device(model))
    extra = {k: v for k, v in (inputs or {}).items() if k != "input_ids"}

    def run() -> None:
        is_probe = isinstance(observer, Probe)
        if is_probe:
            observer.begin(ids, [])
        with torch.no_grad(), attach(probes=[observer] if is_probe else [], edits=[] if is_probe else [observer]):
            model(input_ids=ids, **extra)
        if is_probe:
            observer.end()

    contextvars.Context().run(run)


def prepare(model, edits: Sequence[Edit], input_ids: Tensor, *, inputs: dict | None = None) -> None:
    """Before an edited pass over ``input_ids``: bind the edits and run the unedited passes they ask for.

    Each edit's :meth:`~attnlab.core.Edit.input_probe` is asked for a probe; the probe is run on
    the input and given back with :meth:`~attnlab.core.Edit.prepared`, until the edit asks for
    none. Without edits nothing happens (the model is not even instrumented). ``inputs``: the
    model's other inputs for those passes (a vision-language model's ``pixel_values``: VAR finds
    its sinks among the image tokens only when the image is there).
    """
    if not edits:
        return
    bind(model, edits)
    for e in edits:
        for _ in range(MAX_ROUNDS):
            probe = e.input_probe(input_ids)
            if probe is None:
                break
            unedited(model, input_ids, probe, inputs=inputs)
            e.prepared(probe)
        else:
            raise RuntimeError(f"{e!r} asked for more than {MAX_ROUNDS} unedited passes on one input: its input_probe never returns None")


def run_edit(
    model,
    tokenizer,
    edits: Sequence[Edit],
    evals: Sequence[str] | None = None,
    *,
    specs_text: Sequence[str] = (),
    model_name: str = "",
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
    allow_extrapolation: bool = False,
) -> EditResult:
    """Instrument ``model``, check and calibrate the edits, and measure ``evals`` without and with them.

    Each edit is checked against the model's sites (:meth:`~attnlab.core.Edit.validate`) and
    calibrated as it declares (:func:`attnlab.runs.calibrate.calibrate`; a mean ablation on held-out
    sonnets, the other calibrations on *Lucrece*), then :func:`attnlab.runs.evaluate.compare`
    measures each evaluation without and with the edits; every edit is closed afterwards.

    Args:
        evals: evaluation names (:data:`attnlab.runs.evaluate.METRICS`); None: the defaults for
            the model's kind (:data:`~attnlab.runs.evaluate.DEFAULT_EVALS`: ``ppl, needle`` on a
            decoder, ``match`` on an encoder), the others skipped with the reason recorded in
            ``meta["skipped"]``.
        allow_extrapolation: run evaluations (and calibrations) whose inputs exceed the positions
            the model was trained on (``config.max_position_embeddings``); refused by default,
            before any model work, as :func:`attnlab.runs.scan.scan` does.

    Raises:
        ValueError: an evaluation that does not apply to the model's kind (perplexity on an
            encoder), inputs beyond the trained positions, an edit that does not fit the model or
            selects no site, or a metric that comes out NaN or infinite (naming the edit, the
            metric and how many examples).
    """
    from attnlab.models.conventions import conventions
    from attnlab.runs.calibrate import calibrate
    from attnlab.runs.evaluate import compare, input_tokens

    name = model_name or getattr(model, "attnlab_identity", None) or type(model).__name__
    conv = conventions(model, tokenizer)
    evals, skipped = choose_evals(evals, conv.kind, name)
    for ev in evals:
        n = input_tokens(ev, tokenizer)
        check_positions(model, n, f"the {ev} evaluation (inputs of up to {n} tokens)", allow_extrapolation)
    t0, started = time.perf_counter(), time.time()
    sites = bind(model, edits, backend=backend)
    calibrated = []
    for i, e in enumerate(edits):
        if e.calibration is None:
            continue
        name = specs_text[i] if i < len(specs_text) else repr(e)
        on = _calibration_inputs(e, tokenizer)  # before: a calibrated edit may declare no calibration any more
        if progress:
            progress(f"calibrating {name}")
        calibrate(e, model, tokenizer, allow_extrapolation=allow_extrapolation)
        calibrated.append({"edit": name, **on, "applied": repr(e)})
    try:
        results = compare(model, tokenizer, edits, evals, progress=progress, names=list(specs_text))
    finally:
        for e in edits:
            e.close()
    meta = make_meta(
        "edit",
        started=started,
        wall_s=time.perf_counter() - t0,
        settings={
            "edits": list(specs_text) or [repr(e) for e in edits],
            "evals": list(evals),
            "backend": backend,
            "model": model_name,
            "allow_extrapolation": allow_extrapolation,
        },
        model=model_meta(model, name=model_name, layers=len(sites), heads=sites[0].num_heads, conventions=conv.as_dict()),
        applied=[repr(e) for e in edits],  # after calibration: the layers and heads each edit chose
        calibrated=calibrated,  # only the edits that were calibrated, and on what
        composition="stages run logits → probs → output; within a stage, edits act in the order given",
        metrics=[r.summary() for r in results],
        skipped=skipped,
    )
    examples = {}
    for r in results:
        examples[r.name] = {"before": r.before, "after": r.after}
        if r.weights is not None:
            examples[r.name]["tokens"] = r.weights
        if r.detail:
            examples[r.name]["detail"] = r.detail
    return EditResult(meta, examples)


def _calibration_inputs(edit: Edit, tokenizer) -> dict:
    """What ``edit`` was calibrated on: ``{"calibration", "on", "passes", "tokens"}`` (its default calibration inputs)."""
    inputs = edit.calibration_inputs(tokenizer)
    tokens = sum(int(ids.shape[-1]) for ids in inputs)
    how = "unedited passes" if edit.calibration == "probe" else f"the {edit.calibration} search over"
    on = f"{how} {len(inputs)} input{'s' if len(inputs) != 1 else ''} ({tokens:,} tokens)" if inputs else f"the {edit.calibration} search"
    return {"calibration": edit.calibration, "on": on, "passes": len(inputs), "tokens": tokens}


def choose_evals(evals: Sequence[str] | None, kind: str, name: str) -> tuple[list[str], list[dict]]:
    """The evaluations to run on a ``kind`` model and those skipped: ``(evals, [{"what", "why"}])``.

    ``evals=None`` takes the defaults for ``kind`` and records as skipped the other kinds'
    defaults that do not apply to it; named evaluations must all apply, or ``ValueError`` says which one and what would.

    Example:
        >>> choose_evals(None, "encoder", "minilm-l6")[1][0]["what"]
        'evaluation ppl'
    """
    from attnlab.runs.evaluate import DEFAULT_EVALS, METRICS

    if isinstance(evals, str):
        raise TypeError(f"evals is a list of evaluation names (e.g. ['ppl', 'needle']), got evals={evals!r}")
    if evals is None:
        chosen = list(DEFAULT_EVALS[kind])
        others = dict.fromkeys(e for names in DEFAULT_EVALS.values() for e in names if kind not in METRICS[e].kinds)
        return chosen, [{"what": f"evaluation {e}", "why": f"it {METRICS[e].needs}, and {name} is {_a(kind)}"} for e in others]
    evals = list(evals)
    unknown = [e for e in evals if e not in METRICS]
    if unknown:
        raise ValueError(f"unknown evaluation {unknown[0]!r}: choose from {', '.join(METRICS)}")
    usable = [n for n, m in METRICS.items() if kind in m.kinds]
    for e in evals:
        if kind not in METRICS[e].kinds:
            raise ValueError(
                f"the {e} evaluation {METRICS[e].needs}, which needs {_a(' or '.join(sorted(METRICS[e].kinds)))}, "
                f"and {name} is {_a(kind)}: choose from {', '.join(usable)}"
            )
    return evals, []


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun
