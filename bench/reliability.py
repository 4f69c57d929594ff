"""A hostile but realistic user: bad arguments, bad files, failed writes, bad API input; each outcome classified.

Every case runs in a fresh process on tiny models built from configs (random weights, a
character tokenizer) in a temporary workspace, except the few that name the embedded models. A
case either expects an error or expects success, and is classified as:

- ``clear error``: expected an error; exit status non-zero, one ``error: ...`` message (for API
  cases a ValueError/TypeError) that contains what the case says the message must name;
- ``ok``: expected success; exit status 0 and the case's check of what was written holds;
- ``traceback``: a Python traceback reached the user;
- ``silently wrong``: exit 0 where an error was due, or a success whose output fails its check
  (a probe dropped, NaN written, nothing edited);
- ``unclear``: an error without a traceback whose message does not name the problem;
- ``data lost``: an input file changed, an earlier output was replaced without ``--force``, or
  an output was left half-written.

Usage:
    python bench/reliability.py            # every case: bench/results/reliability.{md,json}
    python bench/reliability.py -k report  # the baseline cases and those whose name contains "report" (not saved)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from harness import write

OUTCOMES = ("clear error", "ok", "traceback", "silently wrong", "unclear", "data lost")


@dataclass
class Case:
    """One thing a user does.

    Attributes:
        name: what is tried.
        kind: the class of the issue it belongs to (tracebacks, markup, silently wrong, data, API).
        argv: the CLI's arguments (``{w}`` is the workspace), or None for an API case.
        code: for an API case, Python run in a fresh process (``w`` is the workspace).
        expect: ``"error"`` or ``"ok"``.
        message: a fragment the error message must contain (errors only).
        check: for a success, ``check(workspace) -> problem or None``.
        env: extra environment variables.
        keep: workspace files that must not change.
    """

    name: str
    kind: str
    argv: list[str] | None = None
    code: str | None = None
    expect: str = "error"
    message: str = ""
    check: Callable[[Path], str | None] | None = None
    env: dict = field(default_factory=dict)
    keep: tuple[str, ...] = ()


CHARS = "abcdefghijklmnopqrstuvwxyz .,;:'!?\n"


def _workspace(w: Path) -> None:
    """Tiny models, texts and result files the cases read."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, processors

    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="<unk>")
    for name, positions in (("tiny", 4096), ("tiny128", 128)):
        cfg = transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=positions,
        )  # fmt: skip
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(w / name)
        tok.save_pretrained(w / name)
    for name, drop in (("noweights", "model.safetensors"), ("badconfig", None), ("trunc", None)):
        (w / name).mkdir()
        for f in (w / "tiny").iterdir():
            if f.name != drop:
                (w / name / f.name).write_bytes(f.read_bytes())
    (w / "badconfig" / "config.json").write_text("{not json")
    weights = (w / "trunc" / "model.safetensors").read_bytes()
    (w / "trunc" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (w / "bad.gguf").write_bytes(os.urandom(1000))
    (w / "text.txt").write_text("full fathom five thy father lies; of his bones are coral made. " * 4)
    (w / "[bold]x:smile:.txt").write_text("those are pearls that were his eyes. " * 4)
    (w / "empty.txt").write_text("  \n")
    (w / "binary.txt").write_bytes(b"caf\xe9 \x00\xff")
    (w / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (w / "afile").write_text("a file where a folder is expected")
    (w / "list-meta.json").write_text(json.dumps({"meta": [1, 2], "findings": {}}))
    (w / "not-json.json").write_text("<html>")
    (w / "nan.json").write_text('{"meta": {"format": "attnlab.result", "kind": "scan", "schema": 2}, "findings": {"x": NaN}}')


def _results(rel: str, *keys: str) -> Callable[[Path], str | None]:
    """A check: ``rel`` is strict JSON with the report beside it and these findings."""

    def check(w: Path) -> str | None:
        path = w / rel
        if not path.is_file() or not path.with_name("report.html").is_file():
            return f"{rel} or its report.html is missing"
        try:
            data = json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError as e:
            return f"{rel} is not strict JSON: {e}"
        missing = [k for k in keys if k not in data.get("findings", {})]
        return f"findings lack {missing}" if missing else None

    return check


def _file(rel: str) -> Callable[[Path], str | None]:
    return lambda w: None if (w / rel).is_file() else f"{rel} was not written"


SCAN = ["scan", "--model", "{w}/tiny", "--probes", "sink,entropy", "--text", "{w}/text.txt"]
EDIT = ["edit", "--model", "{w}/tiny", "--eval", "logit_diff"]
TRAIN = ["train", "--task", "mqar", "--steps", "4", "--eval-every", "2", "--eval-batches", "1", "--batch-size", "4"]
API = "import sys, torch, numpy as np, attnlab\nfrom attnlab.models.hf import load\nw = sys.argv[1]\n"


def cases() -> list[Case]:
    """Every case, in the order they run (cases that share an --out folder run in this order)."""
    return [
        # --- success paths: the outputs later cases read or protect ---------------------------
        Case("scan a text file", "baseline", [*SCAN, "--out", "{w}/o-scan"], expect="ok", check=_results("o-scan/results.json", "sink", "entropy")),
        Case("edit with logit_diff", "baseline", [*EDIT, "--edit", "head_mask:heads=L0H1", "--out", "{w}/o-edit"], expect="ok", check=_file("o-edit/results.json")),
        Case("train a few steps", "baseline", [*TRAIN, "--out", "{w}/o-train"], expect="ok", check=_file("o-train/results.json")),
        Case("report of a scan", "baseline", ["report", "{w}/o-scan/results.json", "--out", "{w}/again.html"], expect="ok", check=_file("again.html")),
        Case("report of an edit", "baseline", ["report", "{w}/o-edit/results.json", "--out", "{w}/edit.html"], expect="ok", check=_file("edit.html")),
        Case("report of a training run", "baseline", ["report", "{w}/o-train/results.json", "--out", "{w}/train.html"], expect="ok", check=_file("train.html")),
        Case("scan with a markup-like file name", "markup", [*SCAN[:-1], "{w}/[bold]x:smile:.txt", "--out", "{w}/o-markup"], expect="ok", check=_results("o-markup/results.json", "sink")),
        Case("scan --synthetic needle alone", "silently wrong", ["scan", "--model", "{w}/tiny", "--synthetic", "needle", "--needle-lengths", "600", "--out", "{w}/o-needle"], expect="ok", check=_results("o-needle/results.json", "retrieval")),
        # --- outputs: nothing lost, nothing half-written ------------------------------------------
        Case("scan into a folder that holds results", "data", [*SCAN, "--out", "{w}/o-scan"], message="--force", keep=("o-scan/results.json", "o-scan/report.html")),
        Case("scan into it with --force", "data", [*SCAN, "--out", "{w}/o-scan", "--force"], expect="ok", check=_results("o-scan/results.json", "sink")),
        Case("edit into a folder that holds results", "data", [*EDIT, "--edit", "head_mask:heads=L0H1", "--out", "{w}/o-edit"], message="--force", keep=("o-edit/results.json",)),
        Case("report --out onto its input", "data", ["report", "{w}/o-scan/results.json", "--out", "{w}/o-scan/results.json"], message="results", keep=("o-scan/results.json",)),
        Case("scan --out is a file", "tracebacks", [*SCAN, "--out", "{w}/afile"], message="afile", keep=("afile",)),
        Case("scan --out under a file", "tracebacks", [*SCAN, "--out", "{w}/afile/sub"], message="afile"),
        Case("scan --out in /proc", "tracebacks", [*SCAN, "--out", "/proc/attnlab-out"], message="/proc/attnlab-out"),
        Case("train --out under a file", "tracebacks", [*TRAIN, "--out", "{w}/afile/sub"], message="afile"),
        Case("cache folder is a file", "tracebacks", ["scan", "--model", "smollm2-135m", "--out", "{w}/o-cache"], message="ATTNLAB_CACHE", env={"ATTNLAB_CACHE": "{w}/afile"}),
        # --- bad model files ----------------------------------------------------------------------
        Case("model folder without weights", "tracebacks", [*SCAN[:2], "{w}/noweights", *SCAN[3:], "--out", "{w}/o-x"], message="noweights"),
        Case("model folder with a truncated safetensors", "tracebacks", [*SCAN[:2], "{w}/trunc", *SCAN[3:], "--out", "{w}/o-x"], message="trunc", keep=("trunc/model.safetensors",)),
        Case("model folder with a broken config.json", "tracebacks", [*SCAN[:2], "{w}/badconfig", *SCAN[3:], "--out", "{w}/o-x"], message="config.json"),
        Case("a 1,000-byte .gguf", "tracebacks", [*SCAN[:2], "{w}/bad.gguf", *SCAN[3:], "--out", "{w}/o-x"], message="bad.gguf", keep=("bad.gguf",)),
        Case("an unknown Hub id offline", "tracebacks", [*SCAN[:2], "nobody/no-such-model", *SCAN[3:], "--out", "{w}/o-x"], message="nobody/no-such-model"),
        Case("a model path that does not exist", "tracebacks", [*SCAN[:2], "{w}/nowhere", *SCAN[3:], "--out", "{w}/o-x"], message="nowhere"),
        Case("--device cuda on a CPU machine", "tracebacks", [*SCAN, "--device", "cuda", "--out", "{w}/o-x"], message="cuda"),
        Case("--dtype float13", "tracebacks", [*SCAN, "--dtype", "float13", "--out", "{w}/o-x"], message="float13"),
        Case("train --device cuda on a CPU machine", "tracebacks", [*TRAIN, "--device", "cuda", "--out", "{w}/o-x"], message="cuda"),
        Case("edit an encoder", "tracebacks", ["edit", "--model", "minilm-l6", "--edit", "head_mask:heads=L0H1", "--eval", "ppl", "--out", "{w}/o-x"], message="encoder"),
        # --- bad input files ----------------------------------------------------------------------
        Case("--text missing file", "tracebacks", [*SCAN[:-1], "{w}/missing.txt", "--out", "{w}/o-x"], message="missing.txt"),
        Case("--text path with markup, missing", "markup", [*SCAN[:-1], "{w}/[/]nope:smile:.txt", "--out", "{w}/o-x"], message="[/]nope:smile:.txt"),
        Case("--text empty", "tracebacks", [*SCAN[:-1], "{w}/empty.txt", "--out", "{w}/o-x"], message="empty"),
        Case("--text binary", "tracebacks", [*SCAN[:-1], "{w}/binary.txt", "--out", "{w}/o-x"], message="UTF-8"),
        Case("--prompts malformed JSONL", "tracebacks", ["scan", "--model", "{w}/tiny", "--prompts", "{w}/bad.jsonl", "--out", "{w}/o-x"], message="line 2"),
        Case("report of a missing file", "tracebacks", ["report", "{w}/none.json"], message="none.json"),
        Case("report of a folder", "tracebacks", ["report", "{w}/o-scan"], message="o-scan"),
        Case("report of HTML", "tracebacks", ["report", "{w}/not-json.json"], message="not-json.json"),
        Case("report of a file whose meta is a list", "tracebacks", ["report", "{w}/list-meta.json"], message="list-meta.json"),
        Case("report of a file with bare NaN", "tracebacks", ["report", "{w}/nan.json"], message="nan.json"),
        # --- option values -----------------------------------------------------------------------
        Case("unknown probe", "options", [*SCAN[:3], "--probes", "sinks", "--out", "{w}/o-x"], message="sinks"),
        Case("--probes retrieval without needle inputs", "silently wrong", [*SCAN[:3], "--probes", "retrieval", "--text", "{w}/text.txt", "--out", "{w}/o-x"], message="needle"),
        Case("--synthetic haystack", "options", [*SCAN, "--synthetic", "haystack", "--out", "{w}/o-x"], message="haystack"),
        Case("--needle-lengths 5x", "options", [*SCAN, "--needle-lengths", "5x", "--out", "{w}/o-x"], message="5x"),
        Case("--max-len beyond trained positions", "options", [*SCAN, "--max-len", "99999", "--out", "{w}/o-x"], message="allow-extrapolation"),
        Case("--backend nosuch", "options", [*SCAN, "--backend", "nosuch", "--out", "{w}/o-x"], message="nosuch"),
        Case("--task nosuchmod:X (markup-like)", "markup", [*TRAIN[:1], "--task", "nosuchmod:X", *TRAIN[3:], "--out", "{w}/o-x"], message="nosuchmod:X"),
        Case("--task-option without =", "options", [*TRAIN, "--task-option", "lag", "--out", "{w}/o-x"], message="lag"),
        Case("train --lr inf", "silently wrong", [*TRAIN, "--lr", "inf", "--out", "{w}/o-x"], message="lr"),
        Case("unknown mechanism in a sweep", "options", ["bench", "tasks", "--task", "mqar", "--mechanisms", "mha,nosuch", "--out", "{w}/o-x"], message="nosuch"),
        # --- edits that select nothing or break the model ------------------------------------------
        Case("edit spec: empty range 5-1", "silently wrong", [*EDIT, "--edit", "head_mask:layers=5-1", "--out", "{w}/o-x"], message="5-1"),
        Case("edit spec: sites that match nothing", "silently wrong", [*EDIT, "--edit", "temperature:tau=2,sites=layers.99.attn", "--out", "{w}/o-x"], message="layers.99.attn"),
        Case("edit spec: tau=1e-40", "silently wrong", [*EDIT, "--edit", "temperature:tau=1e-40", "--out", "{w}/o-x"], message="tau"),
        Case("edit spec: factor=inf", "silently wrong", [*EDIT, "--edit", "head_scale:heads=L0H0,factor=inf", "--out", "{w}/o-x"], message="factor"),
        Case("edit spec: head out of range", "options", [*EDIT, "--edit", "head_mask:heads=L9H0", "--out", "{w}/o-x"], message="layer 9 is out of range"),
        Case("edit spec: malformed", "options", [*EDIT, "--edit", "head_mask:heads", "--out", "{w}/o-x"], message="key=value"),
        Case("edit spec: unknown edit", "options", [*EDIT, "--edit", "nosuch", "--out", "{w}/o-x"], message="nosuch"),
        Case("edit --eval nosuch", "options", [*EDIT[:4], "--eval", "nosuch", "--edit", "head_mask:heads=L0H1", "--out", "{w}/o-x"], message="nosuch"),
        Case("edit needle beyond 128 trained positions", "silently wrong", ["edit", "--model", "{w}/tiny128", "--eval", "needle", "--edit", "head_mask:heads=L0H1", "--out", "{w}/o-x"], message="allow-extrapolation"),
        # --- the API --------------------------------------------------------------------------------
        Case("scan(max_len=0)", "API", code=API + "m, t = load(w + '/tiny'); attnlab.scan(m, t, ['abc abc'], probes=['sink'], repeated=False, max_len=0)", message="max_len"),
        Case("scan(needle_depths=[1.5])", "API", code=API + "m, t = load(w + '/tiny'); attnlab.scan(m, t, [], probes=['retrieval'], repeated=False, needle_lengths=[600], needle_depths=[1.5])", message="1.5"),
        Case('scan(texts="a string")', "API", code=API + "m, t = load(w + '/tiny'); attnlab.scan(m, t, 'a string', probes=['sink'], repeated=False)", message="texts"),
        Case("attend: NaN query row, sdpa", "API", code=API + "q = torch.randn(1, 2, 4, 8); q[0, 0, 1] = float('nan')\no = attnlab.attend(q, q, q, backend='sdpa')\nassert o[0, 0, 1].isnan().all(), 'a NaN row came out finite'", expect="ok"),
        Case("attend: NaN query row, auto", "API", code=API + "q = torch.randn(1, 2, 4, 8); q[0, 0, 1] = float('nan')\no = attnlab.attend(q, q, q, is_causal=True)\nassert o[0, 0, 1].isnan().all(), 'a NaN row came out finite'", expect="ok"),
        Case("attend: Tq = 0 with a probe", "API", code=API + "from attnlab.probes import Entropy\nattnlab.attend(torch.randn(1, 2, 0, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), probes=[Entropy()])", expect="ok"),
        Case("attend: scale=np.float32(0.5)", "API", code=API + "q = torch.randn(1, 2, 4, 8); attnlab.attend(q, q, q, scale=np.float32(0.5))", expect="ok"),
        Case("mechanisms.get(None)", "API", code=API + "attnlab.mechanisms.get(None, dim=8, heads=2)", message="name"),
        Case("mha with float64 input", "API", code=API + "m = attnlab.mechanisms.get('mha', dim=8, heads=2)\nm(torch.randn(1, 4, 8, dtype=torch.float64))", message="float64"),
        Case("capture an unknown hook point", "API", code=API + "from attnlab.models.tiny import TinyTransformer\nwith attnlab.capture(TinyTransformer(5, dim=8, heads=2, layers=1), 'layers.3.resid_pre'): pass", message="valid points"),
        Case("intervene with a tensor of the wrong shape", "API", code=API + "from attnlab.models.tiny import TinyTransformer\nm = TinyTransformer(5, dim=8, heads=2, layers=1)\nwith attnlab.intervene(m, {'embed': torch.zeros(1, 3, 8)}): m(torch.zeros(1, 4, dtype=torch.long))", message="[1, 4, 8]"),
    ]  # fmt: skip


def _digest(w: Path, rels) -> dict[str, str | None]:
    return {r: hashlib.sha256((w / r).read_bytes()).hexdigest() if (w / r).is_file() else None for r in rels}


def run(case: Case, w: Path) -> dict:
    """Run one case in a fresh process and classify it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATTNLAB_CACHE": os.environ.get("ATTNLAB_CACHE", str(w / "cache"))}
    env.update({k: v.format(w=w) for k, v in case.env.items()})
    if case.argv is not None:
        cmd = [sys.executable, "-m", "attnlab.cli", *(a.format(w=w) for a in case.argv)]
    else:
        wrapped = (
            "try:\n"
            + "".join(f"    {line}\n" for line in case.code.splitlines())
            + ("except (ValueError, TypeError) as e:\n    print('error:', e, file=sys.stderr); sys.exit(1)\n")
        )
        cmd = [sys.executable, "-c", wrapped, str(w)]
    before = _digest(w, case.keep)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=w)
    wall = time.perf_counter() - t0
    said = " ".join((p.stderr or p.stdout).split())
    outcome, why = _classify(case, p, said, w, before)
    return {
        "case": case.name,
        "kind": case.kind,
        "expect": case.expect,
        "outcome": outcome,
        "exit": p.returncode,
        "why": why,
        "wall_s": round(wall, 1),
    }


def _classify(case: Case, p, said: str, w: Path, before: dict) -> tuple[str, str]:
    if "Traceback" in p.stdout + p.stderr:
        return "traceback", said[-300:]
    if _digest(w, case.keep) != before:
        return "data lost", f"changed: {[k for k, v in _digest(w, case.keep).items() if v != before[k]]}"
    if case.expect == "ok":
        if p.returncode != 0:
            return "unclear", said[:300]
        problem = case.check(w) if case.check else None
        return ("silently wrong", problem) if problem else ("ok", "")
    if p.returncode == 0:
        return "silently wrong", "exit 0: " + said[:200]
    if case.message and case.message not in said:
        return "unclear", said[:300]
    return "clear error", said[:300]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="the baseline cases and those whose name contains this (results are then not saved)")
    args = ap.parse_args()
    chosen = [c for c in cases() if c.kind == "baseline" or args.k in c.name]  # the baseline writes what others read
    with tempfile.TemporaryDirectory(prefix="attnlab-hostile-") as tmp:
        w = Path(tmp)
        _workspace(w)
        baseline = [c for c in chosen if c.kind in ("baseline", "data")]  # in order: later ones read their outputs
        rest = [c for c in chosen if c not in baseline]
        rows = [run(c, w) for c in baseline]
        for r in rows:
            print(f"{r['outcome']:>15}  {r['case']}", flush=True)
        with ThreadPoolExecutor(2) as pool:
            for r in pool.map(lambda c: run(c, w), rest):
                print(f"{r['outcome']:>15}  {r['case']}", flush=True)
                rows.append(r)
    counts = Counter(r["outcome"] for r in rows)
    summary = f"tried {len(rows)}: " + ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)
    print(summary)
    if not args.k:
        write(
            "reliability",
            rows,
            rows,
            [
                ("case", "case"),
                ("kind", "class"),
                ("expect", "expected"),
                ("outcome", "outcome"),
                ("exit", "exit"),
                ("why", "message or problem"),
            ],
            settings={"cases": len(rows)},
            notes=[summary, "Each case is a fresh process on tiny models built from configs (bench/reliability.py lists them)."],
        )


if __name__ == "__main__":
    main()
