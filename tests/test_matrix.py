"""Every command's defaults work on every supported model (issue 24): a model × command matrix.

Each command of the ``attnlab`` app runs in-process (typer's CliRunner) with its defaults: the
commands that take a model (:data:`MODEL_COMMANDS`) on a tiny random model of every supported
architecture, built from a config and saved with a small byte-level BPE tokenizer trained on
attnlab's shipped texts (so the default needle lengths and perplexity windows fit); the others once,
on minimal inputs (:data:`OTHER_COMMANDS`). Only the options that keep a case short are passed. A
case passes when it exits 0, writes results.json and report.html, and leaves no warning
unexplained: every warning printed is an attnlab ``warning: <what>: <why>`` line, and nothing else
(Python or transformers) warns. The embedded models run the same way, marked slow.

A command added to the app fails :func:`test_every_command_of_the_app_is_in_the_matrix` until it
is listed here.
"""

import logging
import warnings
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from attnlab import results
from attnlab.cli import Category, app
from attnlab.models.hf import SUPPORTED
from tests.conftest import tiny_causal_lm

FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "bert")
ENCODERS = {"bert"}
VOCAB = 512

MODEL_COMMANDS = {  # command -> the arguments a case needs besides --model and --out
    "scan": [],
    "edit": ["--edit", "head_mask:heads=L0H0"],
    "circuit": ["--task", "induction", "--pairs", "2", "--method", "dla"],
    "represent": ["--method", "cka", "--dataset", "lexical", "--examples", "10"],
}
REFUSED = {("circuit", "bert"), ("circuit", "minilm-l6")}  # circuits score next-token answers: decoders only, said plainly
OTHER_COMMANDS = ("list", "check", "report", "train", "bench tasks")  # run once each (list: once per category)
TRAIN = ["--task", "mqar", "--steps", "4", "--eval-every", "2", "--batch-size", "4"]  # a few steps of the default model
OUTPUTS = ("results.json", "report.html")


def _commands(group: TyperGroup, prefix: str = "") -> list[str]:
    """Every runnable command of the app's command group, sub-apps' as ``"bench tasks"``."""
    out = []
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        out += _commands(cmd, full + " ") if isinstance(cmd, TyperGroup) else [full]
    return out


def test_every_command_of_the_app_is_in_the_matrix():
    listed = [*MODEL_COMMANDS, *OTHER_COMMANDS]
    assert sorted(_commands(typer.main.get_command(app))) == sorted(listed), (
        "a command of attnlab.cli.app is missing from the matrix (or the matrix lists one the app lacks): "
        "add it to MODEL_COMMANDS (it takes --model) or OTHER_COMMANDS in tests/test_matrix.py"
    )


def test_every_probe_edit_and_evaluation_declares_where_it_applies():
    from attnlab import edits, probes
    from attnlab.core.site import KINDS
    from attnlab.runs.evaluate import METRICS

    classes = [r.lookup(n) for r in (probes.registry, edits.registry) for n in r.names()]
    for kinds, needs, what in [(c.kinds, c.needs, c.__name__) for c in classes] + [(m.kinds, m.needs, n) for n, m in METRICS.items()]:
        assert kinds and set(kinds) <= set(KINDS), what
        assert needs or set(kinds) == set(KINDS), f"{what} applies to {sorted(kinds)} only: say why in its needs"
    for c in classes:
        assert isinstance(c.with_sliding_window, bool) and isinstance(c.with_softcap, bool), c.__name__
        assert c.caveat or (c.with_sliding_window and c.with_softcap), f"{c.__name__}: say in its caveat why it does not fit every model"


def test_the_tiny_models_cover_every_supported_architecture(model_dirs):
    import json

    types = {json.loads((model_dirs[f] / "config.json").read_text())["model_type"] for f in FAMILIES}
    assert types == set(SUPPORTED)


# ---- tiny models of every architecture, with a tokenizer ---------------------------------------------------------


def _tokenizer(encoder: bool):
    """A byte-level BPE of :data:`VOCAB` tokens trained on the shipped texts: ``<s> text`` (decoders) or ``[CLS] text [SEP]``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from attnlab.data import TEXTS, text

    specials = ["[CLS]", "[SEP]", "[PAD]", "[MASK]"] if encoder else ["<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([text(name) for name in TEXTS], trainer)
    if encoder:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 1)])
        kw = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]"}
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        kw = {"bos_token": "<s>", "eos_token": "</s>"}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """family -> a saved tiny random model (2-3 layers, 4 heads) and its tokenizer, as a model directory.

    The tokenizer's ``model_max_length`` is the model's positions, as a real checkpoint's is.
    """
    root = tmp_path_factory.mktemp("models")
    tokenizers = {encoder: _tokenizer(encoder) for encoder in (False, True)}
    out = {}
    for family in FAMILIES:
        model = tiny_causal_lm(family, vocab_size=VOCAB)
        model.save_pretrained(root / family)
        tok = tokenizers[family in ENCODERS]
        tok.model_max_length = model.config.max_position_embeddings
        tok.save_pretrained(root / family)
        out[family] = root / family
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "attnlab-cache"))


# ---- running a case ---------------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def run(*args) -> tuple:
    """``attnlab args`` in-process: the result, and every warning it left unexplained (empty when all is well)."""
    handler = _Records()
    loggers = [logging.getLogger(), logging.getLogger("transformers"), logging.getLogger("torch")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    unexplained = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if not w.category.__module__.startswith("attnlab") or ": " not in str(w.message)
    ]
    unexplained += [f"log {rec.name} {rec.levelname}: {rec.getMessage()}" for rec in handler.records]
    for line in r.output.splitlines():
        if "warn" in line.lower() and not (line.startswith("warning: ") and ": " in line[len("warning: ") :]):
            unexplained.append(f"printed: {line}")
    return r, unexplained


def check(r, unexplained: list[str], out: Path | None = None) -> dict | None:
    """Exit 0, no warning left unexplained, and (with ``out``) results.json and report.html written; returns the meta block."""
    assert r.exit_code == 0, r.output
    assert not unexplained, "\n".join(unexplained)
    if out is None:
        return None
    for name in OUTPUTS:
        assert (out / name).is_file(), f"{name} was not written: {r.output}"
    return results.load(out / "results.json").meta


def refused(r, out: Path) -> None:
    """A clear one-line refusal: non-zero exit, an ``error:`` line, no traceback, nothing written."""
    assert r.exit_code != 0 and "error:" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() or not any(out.iterdir()), r.output


# ---- the matrix -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_model_command_with_its_defaults(command, family, model_dirs, own_cache, one_thread, tmp_path):
    out = tmp_path / "out"
    r, unexplained = run(command, *MODEL_COMMANDS[command], "--model", model_dirs[family], "--out", out)
    if (command, family) in REFUSED:
        return refused(r, out)
    meta = check(r, unexplained, out)
    assert meta["kind"] == command
    for s in meta.get("skipped", []):  # each a line of the output too
        assert f"skipped {s['what']}: {s['why']}" in " ".join(r.output.split())
    if command == "scan":
        skipped = [s["what"] for s in meta["skipped"]]
        assert skipped == (["probe retrieval"] if family in ENCODERS else []), skipped
        assert ("retrieval" in meta["settings"]["probes"]) == (family not in ENCODERS)


@pytest.mark.parametrize("category", [c.value for c in Category])
def test_list_with_its_defaults(category):
    check(*run("list", category))


def test_check_with_its_defaults():
    check(*run("check"))


def test_report_with_its_defaults(model_dirs, own_cache, one_thread, tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("the quick brown fox jumps over the lazy dog, and then it sleeps in the sun. " * 4)
    check(
        *run("scan", "--model", model_dirs["llama"], "--text", text, "--probes", "entropy", "--out", tmp_path / "scan"), tmp_path / "scan"
    )
    (tmp_path / "scan" / "report.html").unlink()
    check(*run("report", tmp_path / "scan" / "results.json"), None)
    assert (tmp_path / "scan" / "report.html").is_file()


def test_train_with_its_defaults(tmp_path):
    meta = check(*run("train", *TRAIN, "--out", tmp_path / "out"), tmp_path / "out")
    assert meta["kind"] == "sweep"


def test_bench_tasks_with_its_defaults(tmp_path):
    meta = check(*run("bench", "tasks", *TRAIN, "--seeds", "1", "--out", tmp_path / "out"), tmp_path / "out")
    assert meta["kind"] == "sweep"


# ---- the embedded models ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2-135m", "minilm-l6"])
@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_embedded_model_with_its_defaults(command, model, tmp_path):
    out = tmp_path / "out"
    r, unexplained = run(command, *MODEL_COMMANDS[command], "--model", model, "--out", out)
    if (command, model) in REFUSED:
        return refused(r, out)
    meta = check(r, unexplained, out)
    if command == "scan" and model == "minilm-l6":
        assert [s["what"] for s in meta["skipped"]] == ["probe retrieval"]
        assert [(c["what"], c["used"]) for c in meta["capped"]] == [("max_len", 512)]
        assert "skipped probe retrieval: it decodes needle answers" in " ".join(r.output.split())
