"""``attnlab.scan()``: probe a pretrained model's attention and keep the results as plain data.

A scan instruments a Hugging Face model (every attention call goes through
:func:`attnlab.core.attend` at a site), runs the chosen probes over text inputs, repeated random
token sequences (for the head-pattern detectors) and needle-in-a-haystack trials (for retrieval
heads), and returns a :class:`~attnlab.results.ScanResult`: JSON-ready findings per probe, the
settings and versions that produced them, and the whole attention maps of a short prompt for
the heads chosen with ``maps`` and those the findings point at (the report's attention viewer).
Results are saved and loaded by :mod:`attnlab.results`.

Defaults fit the model (:func:`plan_scan`): the default probes are those that apply to its kind
(``retrieval`` decodes answers, so an encoder skips it), the default needle lengths those that fit
its trained positions. What a default left out is recorded in ``meta["skipped"]`` and what it
shortened in ``meta["capped"]``, each with why; a probe asked for by name that does not apply is
refused.

    >>> model, tok = attnlab.models.hf.load("smollm2-135m")          # doctest: +SKIP
    >>> result = attnlab.scan(model, tok, [text], probes=["sink", "entropy"])  # doctest: +SKIP
    >>> result.save("results.json"); result.report("report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from attnlab.core import Probe, Site, attach
from attnlab.data import tokens as T
from attnlab.models.conventions import conventions, model_kind
from attnlab.models.hf_load import input_device
from attnlab.probes import _base as probe_registry
from attnlab.probes.retrieval import Retrieval
from attnlab.results import ScanResult, make_meta, model_meta
from attnlab.runs._checks import check_positions, trained_positions
from attnlab.runs.defaults import DEFAULT_NEEDLE_LENGTHS, DEFAULT_PROBES, SAMPLE_TOKENS
from attnlab.runs.needle import MAX_NEW_TOKENS, check_grid, needle_in_a_haystack, positions_used, prompt_style

__all__ = [
    "DEFAULT_NEEDLE_LENGTHS",
    "DEFAULT_PROBES",
    "PATTERNS_ON_TEXT",
    "SAMPLE_TOKENS",
    "ScanPlan",
    "ScanResult",
    "ShortInputWarning",
    "capped_length",
    "plan_scan",
    "repeated_tokens",
    "scan",
]


class ShortInputWarning(UserWarning):
    """A scan's inputs are too short for a probe's statistics to mean anything (each probe's ``min_tokens`` says why)."""


SHORTEST_NEEDLE = 256  # when no default length fits, the longest that does, down to this; below it retrieval is skipped
REPEAT_TOKENS = 64  # the repeated random sequences: this many tokens, said twice
MAP_TOKENS = 64  # attention maps in the report: a prompt of at most this many tokens
PATTERNS_ON_TEXT = "patterns_text"  # findings of the head detectors on the texts, when they read repeated tokens too


@dataclass
class ScanPlan:
    """What a scan runs on a model: its defaults fitted to the model, and what they left out or shortened.

    Attributes:
        kind: the model's kind, ``"decoder"`` or ``"encoder"``.
        probes: probe names to run.
        needle_lengths: needle trial lengths in tokens.
        skipped: ``[{"what", "why"}]``: what a default left out (``"probe retrieval"``).
        capped: ``[{"what", "default", "used", "why"}]``: default lengths shortened to the model's positions.
    """

    kind: str
    probes: list[str]
    needle_lengths: list[int]
    skipped: list[dict] = field(default_factory=list)
    capped: list[dict] = field(default_factory=list)


def plan_scan(
    model,
    probes: Sequence[str] | None = None,
    needle_lengths: Sequence[int] | None = None,
    *,
    name: str = "",
    defaults: Sequence[str] = DEFAULT_PROBES,
) -> ScanPlan:
    """The probes and needle lengths a scan of ``model`` runs (None: the defaults that fit it).

    Default probes are those of ``defaults`` whose ``kinds`` hold the model's kind, the others
    skipped with their ``needs``; probes given by name must all apply, or ``ValueError`` says
    which does not. Default needle lengths are those of :data:`DEFAULT_NEEDLE_LENGTHS` whose
    trials (prompt and answer) fit the trained positions; when none does, the longest that does
    (at least :data:`SHORTEST_NEEDLE`), else the default ``retrieval`` probe is skipped.

    Args:
        name: the model's name for the messages (default: its identity or class name).
        defaults: the probes ``probes=None`` stands for (the CLI: those its inputs feed).

    Example:
        >>> plan = plan_scan(encoder, name="minilm-l6")  # encoder: attnlab.models.hf.load("minilm-l6")[0]  # doctest: +SKIP
        >>> plan.skipped                                  # doctest: +SKIP
        [{'what': 'probe retrieval', 'why': 'it decodes needle answers greedily from next-token logits, and minilm-l6 is an encoder'}]
    """
    name = name or getattr(model, "attnlab_identity", None) or type(model).__name__
    kind = model_kind(model)
    a_kind = "an encoder" if kind == "encoder" else "a decoder"
    skipped: list[dict] = []
    if probes is None:
        chosen = []
        for p in _checked_probes(defaults):
            cls = probe_registry.registry.lookup(p)
            if kind in cls.kinds:
                chosen.append(p)
            else:
                skipped.append({"what": f"probe {p}", "why": f"it {cls.needs}, and {name} is {a_kind}"})
    else:
        chosen = _checked_probes(probes)
        for p in chosen:
            cls = probe_registry.registry.lookup(p)
            if kind not in cls.kinds:
                usable = [q for q in probe_registry.names() if kind in probe_registry.registry.lookup(q).kinds]
                raise ValueError(
                    f"the {p} probe {cls.needs}, and {name} is {a_kind}: it applies to {' and '.join(sorted(cls.kinds))}s only; "
                    f"choose from {', '.join(usable)}"
                )
    capped: list[dict] = []
    if needle_lengths is not None:
        check_grid(needle_lengths, [])
        return ScanPlan(kind, chosen, list(needle_lengths), skipped, capped)
    if "retrieval" not in chosen:  # no needle trials
        return ScanPlan(kind, chosen, [], skipped, capped)
    trained = trained_positions(model)
    lengths = [n for n in DEFAULT_NEEDLE_LENGTHS if not trained or positions_used(n) <= trained]
    if len(lengths) < len(DEFAULT_NEEDLE_LENGTHS):
        longest = trained - positions_used(0)  # the longest prompt whose trial fits
        why = f"a trial reaches its length + {MAX_NEW_TOKENS - 1} positions (the answer), and {name} was trained on {trained}"
        if not lengths and longest >= SHORTEST_NEEDLE:
            lengths = [longest]
        if lengths:
            capped.append({"what": "needle_lengths", "default": list(DEFAULT_NEEDLE_LENGTHS), "used": lengths, "why": why})
        elif probes is None:
            chosen.remove("retrieval")
            skipped.append({"what": "probe retrieval", "why": f"its needle trials need {SHORTEST_NEEDLE} tokens or more; {why}"})
        else:
            raise ValueError(
                f"the retrieval probe's needle trials need {SHORTEST_NEEDLE} tokens or more, and {name} was trained on {trained} positions "
                f"(a trial reaches its length + {MAX_NEW_TOKENS - 1}): give shorter needle_lengths (--needle-lengths), or drop retrieval"
            )
    return ScanPlan(kind, chosen, lengths, skipped, capped)


def capped_length(model, default: int, what: str, *, name: str = "") -> tuple[int, list[dict]]:
    """``default`` tokens, or the model's trained positions when fewer, and ``[record]`` when capped (else ``[]``).

    Example:
        >>> capped_length(None, 1024, "max_len")  # no config: nothing to cap
        (1024, [])
    """
    trained = trained_positions(model)
    if not trained or default <= trained:
        return default, []
    name = name or getattr(model, "attnlab_identity", None) or type(model).__name__
    return trained, [{"what": what, "default": default, "used": trained, "why": f"{name} was trained on {trained} positions"}]


def _tokens(tokenizer, ids: torch.Tensor) -> list[str]:
    """Each token as the text it stands for (not the tokenizer's internal pieces like 'Ġthe')."""
    return [tokenizer.decode([i]) for i in ids.tolist()]


def repeated_tokens(tokenizer, *, n: int = 64, count: int = 4, seed: int = 0) -> torch.Tensor:
    """Random token sequences repeated twice, ``[count, start + 2n]``: what the head detectors read.

    Each starts with the tokenizer's start tokens (:func:`attnlab.data.tokens.start_tokens`: BOS
    when it adds one).
    """
    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(min(tokenizer.vocab_size, 20000)) if i not in special])
    rand = pool[torch.randint(len(pool), (count, n), generator=g)]
    seq = torch.cat([rand, rand], dim=1)
    start = T.start_tokens(tokenizer)  # each sequence starts as the tokenizer starts one
    return torch.cat([torch.tensor([start] * count, dtype=torch.long).view(count, len(start)), seq], dim=1)


def scan(
    model,
    tokenizer,
    texts: Sequence[str] = (),
    *,
    probes: Sequence[str] | None = None,
    repeated: bool = True,
    needle_lengths: Sequence[int] | None = None,
    needle_depths: Sequence[float] = (0.1, 0.5, 0.9),
    max_len: int | None = None,
    truncate: bool = False,
    allow_extrapolation: bool = False,
    backend: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    settings: dict | None = None,
    skipped: Sequence[dict] = (),
    capped: Sequence[dict] = (),
    maps: Sequence[tuple[int, int]] = (),
) -> ScanResult:
    """Scan a model's attention with probes; see the module docstring.

    Args:
        texts: text inputs; each is run whole (batch 1) through the model.
        probes: probe names (``attnlab.probes.names()``); ``retrieval`` runs needle trials.
            None: the :data:`DEFAULT_PROBES` that apply to the model's kind (:func:`plan_scan`).
        repeated: also run repeated random token sequences. Without texts every probe reads them;
            with texts the other probes read the texts and ``patterns`` reads both, its findings
            kept apart and labelled: ``findings["patterns"]`` on the repeated tokens,
            ``findings["patterns_text"]`` on the texts (titles and notes say which).
        needle_lengths, needle_depths: the needle trial grid, in tokens and fractions
            (``needle_lengths`` None: :data:`DEFAULT_NEEDLE_LENGTHS`, those that fit the model).
        max_len: longest input in tokens (default: the model's ``max_position_embeddings``).
        truncate: cut longer texts to ``max_len`` instead of refusing them.
        allow_extrapolation: let ``max_len`` exceed the positions the model was trained on
            (a memory/speed measurement; recorded in the result).
        backend: attnlab backend for the attention computations.
        progress: called as ``progress(what, done, total)``.
        settings: extra settings to record (the CLI's arguments).
        skipped, capped: what the caller's own defaults left out or shortened for this model
            (records as :class:`ScanPlan` keeps them: the CLI's); kept in ``meta["skipped"]`` and
            ``meta["capped"]`` before the scan's own.
        maps: ``(layer, head)`` pairs whose whole attention maps on a short prompt the report shows
            (:func:`attnlab.heads.parse_heads` reads ``"L18H6,L17H3"``), besides the heads the findings point at.
    """
    from attnlab.models import hf

    t0, started = time.perf_counter(), time.time()
    name = (settings or {}).get("model") or getattr(model, "attnlab_identity", None) or type(model).__name__
    asked = DEFAULT_PROBES if probes is None else _checked_probes(probes)
    texts = _check_arguments(
        texts, asked, repeated, DEFAULT_NEEDLE_LENGTHS if needle_lengths is None else needle_lengths, needle_depths, max_len
    )
    plan = plan_scan(model, probes, needle_lengths, name=name)  # the arguments hold together: now fit them to the model
    probes, needle_lengths, skipped, capped = plan.probes, plan.needle_lengths, [*skipped, *plan.skipped], [*capped, *plan.capped]
    trained = trained_positions(model)
    max_len = max_len or trained or 2048
    check_positions(model, max_len, f"max_len {max_len}", allow_extrapolation)
    if "retrieval" in probes:
        longest = max(positions_used(n) for n in needle_lengths)
        check_positions(model, longest, f"a needle trial (prompt and answer: up to {longest} tokens)", allow_extrapolation)
    hf.instrument(model, backend=backend)
    sites = hf.sites(model)
    chosen = _checked_heads(maps, sites)  # before any work
    inputs = [_encode(tokenizer, t, i, max_len, truncate) for i, t in enumerate(texts)]
    passive = {name: probe_registry.get(name) for name in probes if name != "retrieval"}
    both = bool(inputs) and repeated and "patterns" in passive  # the head detectors read the texts and the repeated tokens
    on_text = {**passive, **({"patterns": probe_registry.get("patterns")} if both else {})} if inputs else {}
    on_repeated = {} if not repeated else passive if not inputs else {k: v for k, v in passive.items() if k == "patterns"}
    _warn_short(inputs, list(on_text.values()))
    record = []
    for i, ids in enumerate(inputs):
        what = f"text {i + 1}/{len(inputs)} ({ids.shape[1]} tokens)"
        _run(model, tokenizer, ids, list(on_text.values()), _Layers(progress, what, len(sites)))
        record.append({"kind": "text", "tokens": int(ids.shape[1])})
    if on_repeated:
        n, start = REPEAT_TOKENS, len(T.start_tokens(tokenizer))
        if trained and 2 * n + start > trained and not allow_extrapolation:  # said twice, after the start tokens
            n = (trained - start) // 2
            why = f"a sequence is said twice after {start} start token(s) ({2 * REPEAT_TOKENS + start} positions), and {name} was trained on {trained}"
            capped.append({"what": "repeated tokens", "default": REPEAT_TOKENS, "used": n, "why": why})
        seq = repeated_tokens(tokenizer, n=n)
        _run(
            model,
            tokenizer,
            seq,
            list(on_repeated.values()),
            _Layers(progress, f"repeated random tokens ({seq.shape[0]} × {seq.shape[1]})", len(sites)),
        )
        record.append({"kind": "repeated", "sequences": int(seq.shape[0]), "tokens": int(seq.shape[1])})
    findings = {}
    for name, p in passive.items():
        findings[name] = asdict(p.findings(sites))
        if name == "patterns" and both:
            findings[name] = _labelled(findings[name], "repeated random tokens")
            findings[PATTERNS_ON_TEXT] = _labelled(asdict(on_text[name].findings(sites)), "the text" if len(inputs) == 1 else "the texts")
    if "retrieval" in probes:
        from attnlab.data import haystack

        r = Retrieval()
        trials = needle_in_a_haystack(
            model,
            tokenizer,
            r,
            haystack=haystack(),
            lengths=needle_lengths,
            depths=needle_depths,
            progress=lambda line: _report(progress, line, 0, 0),
        )
        broken = [t for t in trials if not t.finite]
        if broken:
            raise ValueError(
                f"the model's next-token logits are not finite in {len(broken)} of {len(trials)} needle trials "
                f"(first: {broken[0].length} tokens, depth {broken[0].depth:g}): check the model's weights and dtype"
            )
        record += [{"kind": "needle", "tokens": t.length, "depth": t.depth, "recalled": t.recalled} for t in trials]
        findings["retrieval"] = asdict(r.findings(sites))
    maps = _attention_maps(model, tokenizer, texts, findings, sites, chosen)
    meta = make_meta(
        "scan",
        started=started,
        wall_s=time.perf_counter() - t0,
        model=model_meta(
            model,
            type=model.config.model_type,
            layers=len(sites),
            heads=sites[0].num_heads,
            kv_heads=sites[0].num_kv_heads,
            trained_positions=trained,
            conventions=conventions(model, tokenizer).as_dict(),
        ),
        settings={
            "probes": list(probes),
            "repeated": repeated,
            "needle_lengths": list(needle_lengths),
            "needle_depths": list(needle_depths),
            "needle_prompt": prompt_style(tokenizer) if "retrieval" in probes else None,
            "max_len": max_len,
            "truncate": truncate,
            "allow_extrapolation": allow_extrapolation,
            "backend": backend,
            "maps": [f"L{layer}H{h}" for layer, h in chosen],
            **(settings or {}),
        },
        inputs=record,
        skipped=skipped,
        capped=capped,
    )
    site_rows = [{"name": s.name, "layer": s.layer, "num_heads": s.num_heads, "num_kv_heads": s.num_kv_heads} for s in sites]
    return ScanResult(meta, site_rows, findings, maps)


def _check_arguments(texts, probes, repeated, needle_lengths, needle_depths, max_len) -> list[str]:
    """The texts as a list; refuse arguments that would scan nothing, drop a probe, or be read as something else."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts is a list of strings (one per input), got {type(texts).__name__}: write texts=[text]")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts is a list of strings, but text {i + 1} is a {type(t).__name__}: {t!r:.60}")
    probes = list(probes)
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len must be a positive number of tokens, or None for the model's trained positions; got max_len={max_len!r}")
    check_grid(needle_lengths, needle_depths)
    if "retrieval" in probes and (not list(needle_lengths) or not list(needle_depths)):
        raise ValueError(
            f"the retrieval probe runs needle trials, but the grid is empty (needle_lengths={list(needle_lengths)}, "
            f"needle_depths={list(needle_depths)}): give lengths and depths (e.g. [512] and [0.5]), or drop 'retrieval' from probes"
        )
    passive = [p for p in probes if p != "retrieval"]
    if not texts and not repeated:
        if "retrieval" not in probes:
            raise ValueError(
                "nothing to scan: no texts, repeated=False and no 'retrieval' probe (needle trials): "
                "give texts, set repeated=True, or add 'retrieval' to probes"
            )
        if passive:
            raise ValueError(
                f"the probes {', '.join(passive)} read text or repeated-token inputs, and this scan has neither "
                "(no texts, repeated=False): give texts, set repeated=True, or scan with probes=['retrieval'] alone for needle trials"
            )
    return texts


def _checked_heads(heads, sites: list[Site]) -> list[tuple[int, int]]:
    """``maps`` as ``(layer, head)`` pairs the model has, or a ``ValueError`` naming the one it lacks."""
    out = []
    for layer, h in heads:
        if not 0 <= layer < len(sites) or not 0 <= h < sites[layer].num_heads:
            raise ValueError(
                f"maps asks for layer {layer} head {h}, and the model has layers 0..{len(sites) - 1} with {sites[0].num_heads} heads each: "
                "choose heads it has (e.g. maps=[(0, 0)], --maps L0H0)"
            )
        out.append((int(layer), int(h)))
    return out


def _checked_probes(probes) -> list[str]:
    """``probes`` as a list of registered probe names, or a ``TypeError``/``ValueError`` saying what is wrong."""
    if isinstance(probes, str) or not isinstance(probes, Iterable):
        raise TypeError(f"probes is a list of probe names (e.g. ['sink', 'entropy']), got probes={probes!r}")
    probes = list(probes)
    unknown = [p for p in probes if p not in probe_registry.names()]
    if unknown:
        raise ValueError(f"unknown probe {unknown[0]!r}: choose from {', '.join(probe_registry.names())}")
    if not probes:
        raise ValueError(f"nothing to scan: probes is empty: choose from {', '.join(probe_registry.names())}")
    return probes


def _warn_short(inputs: list[torch.Tensor], probes: list) -> None:
    """A :class:`ShortInputWarning` per probe whose text inputs are shorter than its ``min_tokens``."""
    for p in probes:
        need = p.min_tokens
        short = [(i, int(ids.shape[1])) for i, ids in enumerate(inputs) if ids.shape[1] < need]
        if short:
            which = ", ".join(f"text {i + 1} ({n} tokens)" for i, n in short[:3]) + (" and more" if len(short) > 3 else "")
            warnings.warn(
                ShortInputWarning(
                    f"{which} {'is' if len(short) == 1 else 'are'} shorter than the {need} tokens the {p.name} probe needs: "
                    f"{p.min_tokens_reason}; give longer texts"
                ),
                stacklevel=3,
            )


def _labelled(findings: dict, inputs: str) -> dict:
    """``findings`` (a :class:`Findings` as a dict) with every title and note saying which ``inputs`` it was measured on."""
    ids = [*findings["heatmaps"], *findings["bars"], *findings["tables"]]
    titles = {k: f"{findings['titles'].get(k, k)} (on {inputs})" for k in ids}
    return {**findings, "titles": titles, "notes": [f"On {inputs}: {n}" for n in findings["notes"]]}


def _report(progress, what: str, done: int, total: int) -> None:
    if progress:
        progress(what, done, total)


def _encode(tokenizer, text: str, index: int, max_len: int, truncate: bool) -> torch.Tensor:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text {index + 1} is empty: give some text to scan")
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]  # lengths are checked here, against max_len
    if ids.shape[1] > max_len:
        if not truncate:
            raise ValueError(
                f"text {index + 1} has {ids.shape[1]} tokens, more than max_len={max_len}: pass truncate=True (--truncate) to cut it, or raise max_len"
            )
        ids = ids[:, :max_len]
    return ids


class _Layers(Probe):
    """Reports progress layer by layer (through the adapter's block hooks), attention untouched."""

    observes_attention = False

    def __init__(self, progress, what: str, layers: int):
        self.progress, self.what, self.layers = progress, what, layers

    def observe_block(self, layer: int, x_in, x_out) -> None:
        _report(self.progress, f"{self.what}: layer {layer + 1}/{self.layers}", layer + 1, self.layers)


@torch.no_grad()
def _run(model, tokenizer, ids: torch.Tensor, probes: list, ticker: _Layers | None = None) -> None:
    tokens = _tokens(tokenizer, ids[0])
    for p in probes:
        p.begin(ids, tokens)
    with attach(probes=[*probes, *([ticker] if ticker and ticker.progress else [])]):
        model(input_ids=ids.to(input_device(model)))
    for p in probes:
        p.end()


class _Maps(Probe):
    """Keeps the whole attention maps ``[T, T]`` of chosen heads only, ``{(layer, head): map}``, as the chunks stream past."""

    def __init__(self, heads: set[tuple[int, int]]):
        self.heads = heads
        self.maps: dict[tuple[int, int], torch.Tensor] = {}

    def observe(self, chunk, site: Site) -> None:
        for layer, h in self.heads:
            if layer == site.layer and h < chunk.probs.shape[1]:
                p = chunk.probs[0, h]  # [Tc, Ts]
                m = self.maps.setdefault((layer, h), torch.zeros(chunk.lk, chunk.lk))
                m[chunk.q_idx, chunk.kv_start : chunk.kv_start + p.shape[-1]] = p.float()


def _found_heads(findings: dict) -> list[tuple[int, int, str]]:
    """The heads the findings single out, with why: the strongest previous-token, induction, retrieval and sink heads."""
    wanted: list[tuple[int, int, str]] = []
    for probe, table, why in (
        ("patterns", "top_previous_token", "strongest previous-token head"),
        ("patterns", "top_induction", "strongest induction head"),
        ("retrieval", "retrieval_heads", "strongest retrieval head"),
    ):
        rows = findings.get(probe, {}).get("tables", {}).get(table) or []
        if rows:
            wanted.append((rows[0]["layer"], rows[0]["head"], why))
    sink = findings.get("sink", {}).get("heatmaps", {}).get("first_token_mass") or []
    cells = [(v, layer, h) for layer, row in enumerate(sink) for h, v in enumerate(row) if v == v]  # NaN: not measured
    if cells:
        _, layer, head = max(cells, key=lambda c: c[0])
        wanted.append((layer, head, "strongest first-token sink head"))
    return wanted


def _map_prompt(tokenizer, texts) -> tuple[torch.Tensor, str]:
    """``([1, T] ids, what they are)``: the user's first text cut to :data:`MAP_TOKENS`, or the sample text's first half of that, said twice."""
    from attnlab.data import sample_text

    start = T.start_tokens(tokenizer)
    if texts:
        ids = T.encode(tokenizer, texts[0])[: MAP_TOKENS - len(start)]
        return T.prompt(tokenizer, ids), f"the first {len(ids)} tokens of the text"
    half = T.encode(tokenizer, sample_text())[: (MAP_TOKENS - len(start)) // 2]
    return T.prompt(tokenizer, half + half), (
        f"the sample text's first {len(half)} tokens, said twice (from the second copy, an induction head looks at the token after "
        "the same token in the first)"
    )


def _attention_maps(model, tokenizer, texts, findings: dict, sites: list[Site], chosen: Sequence[tuple[int, int]] = ()) -> list[dict]:
    """Whole attention maps of one short prompt for the ``chosen`` heads and the heads the findings point at.

    Only those heads' maps are kept while the prompt streams through (:class:`_Maps`). A head
    picked for several reasons is drawn once; cells a causal mask hides are None.
    """
    wanted = [(layer, h, "chosen (--maps)") for layer, h in chosen] + _found_heads(findings)
    if not wanted:
        return []
    ids, prompt = _map_prompt(tokenizer, texts)
    cap = _Maps({(layer, h) for layer, h, _ in wanted})
    with torch.no_grad(), attach(probes=[cap]):
        model(input_ids=ids.to(input_device(model)))
    tokens = _tokens(tokenizer, ids[0])
    causal = model_kind(model) == "decoder"
    why: dict[tuple[int, int], list[str]] = {}
    for layer, head, reason in wanted:
        why.setdefault((layer, head), []).append(reason)
    return [
        {
            "layer": layer,
            "head": head,
            "why": " and ".join(reasons),
            "prompt": prompt,
            "tokens": tokens,
            "matrix": [
                [None if causal and k > q else round(float(x), 4) for k, x in enumerate(row)]
                for q, row in enumerate(cap.maps[(layer, head)])
            ],
        }
        for (layer, head), reasons in why.items()
        if (layer, head) in cap.maps
    ]
