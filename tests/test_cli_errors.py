"""The CLI's error boundary (issue 16): every failure a clear message, nothing silently wrong, nothing lost.

Each class of failure runs the CLI in-process (typer's CliRunner) on a tiny model built from a
config, and checks: a non-zero exit, a message naming the problem, no traceback, and no input or
earlier output changed.
"""

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnlab import results
from attnlab.cli import app

CHARS = "abcdefghijklmnopqrstuvwxyz .,;:'!?"
ROOT = Path(__file__).resolve().parents[1]
TOY = "tests.train.toy:Lag"
SMALL_TRAIN = ["--steps", "4", "--eval-every", "2", "--eval-batches", "1", "--batch-size", "4", "--dim", "8", "--heads", "2"]
SMALL_TRAIN += ["--layers", "1", "--threads", "1"]


def _char_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, processors

    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


def _save_tiny(d: Path, family: str = "llama") -> Path:
    import transformers

    common = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    if family == "bert":
        model = transformers.BertModel(transformers.BertConfig(**common))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, num_key_value_heads=2))
    model.save_pretrained(d)
    _char_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random Llama (2 layers, 2,048 positions) and a character tokenizer, saved as a model directory."""
    return _save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "attnlab-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def cli(*args):
    """Run ``attnlab args`` in-process; the result has exit_code, stdout, stderr and output."""
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(r, *message: str) -> None:
    """Exit 1 with ``error: ...`` naming the problem, and neither a traceback nor an escaped exception."""
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # the boundary exited; nothing escaped it
    assert "error: " in r.stderr and "Traceback" not in r.output, r.output
    for m in message:
        assert m in text, r.output


def digest(*paths: Path) -> dict:
    """sha256 of every file under ``paths``, to show that nothing was changed."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def text_file(tmp_path: Path, name: str = "in.txt") -> Path:
    f = tmp_path / name
    f.write_text("full fathom five thy father lies; of his bones are coral made. " * 2)
    return f


SCAN = ["--probes", "sink", "--max-len", "256"]


def scan(model: Path, text: Path, out: Path, *more):
    return cli("scan", "--model", model, "--text", text, *SCAN, "--out", out, *more)


# ---- writing --out: checked before any model work, never half-written, never clobbered ----------------------------


def test_out_inside_a_file_or_unwritable_folder_is_refused_before_loading(tmp_path, tiny):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    text = text_file(tmp_path)
    before = digest(tmp_path)
    r = scan(tmp_path / "no-such-model", text, blocker / "sub")  # the model is never reached
    refused(r, f"--out {blocker / 'sub'} is inside", "which is a file")
    if os.geteuid() == 0:  # root writes through chmod 0o500: a folder nobody can create files in
        r = scan(tiny, text, Path("/proc/attnlab-test/out"))
        refused(r, "--out /proc/attnlab-test/out cannot be written", "give a directory you can write to")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        r = scan(tiny, text, locked / "out")
        refused(r, "cannot be written", "Permission denied")
    assert digest(tmp_path) == before


def test_out_that_is_a_file_is_refused(tmp_path, tiny):
    (tmp_path / "f").write_text("keep me")
    r = scan(tiny, text_file(tmp_path), tmp_path / "f")
    refused(r, "is a file: give a directory")
    assert (tmp_path / "f").read_text() == "keep me"


def test_existing_results_are_refused_without_force_and_replaced_with_it(tmp_path, tiny):
    out, text = tmp_path / "out", text_file(tmp_path)
    assert scan(tiny, text, out).exit_code == 0
    before, inode = digest(out), (out / "results.json").stat().st_ino
    r = scan(tiny, text, out)
    refused(r, f"--out {out} already holds results (results.json, report.html)", "--force")
    assert digest(out) == before
    r = scan(tiny, text, out, "--force")
    assert r.exit_code == 0, r.output
    assert (out / "results.json").stat().st_ino != inode  # replaced, whole
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]  # no temporary files left


def test_outputs_follow_the_umask_checkpoint_included(tmp_path, tiny, monkeypatch):
    monkeypatch.chdir(ROOT)  # tests.train.toy imports from here
    old = os.umask(0o002)
    try:
        assert scan(tiny, text_file(tmp_path), tmp_path / "scan").exit_code == 0
        r = cli("train", "--task", TOY, *SMALL_TRAIN, "--out", tmp_path / "train")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    for f in [tmp_path / "scan" / "results.json", tmp_path / "scan" / "report.html", *(tmp_path / "train").iterdir()]:
        assert f.stat().st_mode & 0o777 == 0o664, f


def test_train_resumes_from_its_checkpoint_without_force_and_starts_afresh_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert cli("train", "--task", TOY, *SMALL_TRAIN, "--out", out).exit_code == 0
    r = cli("train", "--task", TOY, *SMALL_TRAIN, "--out", out)  # resuming is not overwriting
    assert r.exit_code == 0 and "resuming from" in r.stdout, r.output
    r = cli("train", "--task", TOY, *SMALL_TRAIN, "--out", out, "--force")
    assert r.exit_code == 0 and "starting afresh" in r.stdout and "resuming" not in r.stdout, r.output
    (out / "checkpoint.pt").unlink()  # results without a checkpoint: another run's, refused
    before = digest(out)
    refused(cli("train", "--task", TOY, *SMALL_TRAIN, "--out", out), "already holds results", "--force")
    assert digest(out) == before


def test_a_failing_report_leaves_no_results_json_alone(tmp_path, tiny, monkeypatch):
    def broken(self, **kw):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(results.ScanResult, "html", broken)
    r = scan(tiny, text_file(tmp_path), tmp_path / "out")
    assert r.exit_code == 1 and "RuntimeError: renderer broke (an attnlab bug" in r.stderr, r.output
    assert not (tmp_path / "out").exists()  # neither file, nor the folder made for them


def test_ctrl_c_prints_interrupted_exits_130_and_writes_nothing(tmp_path, tiny, monkeypatch):
    import attnlab.runs.scan

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(attnlab.runs.scan, "scan", interrupted)
    r = scan(tiny, text_file(tmp_path), tmp_path / "out")
    assert r.exit_code == 130 and "interrupted" in r.stderr and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_write_together_leaves_every_target_as_it_was_when_one_write_fails(tmp_path):
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "b").mkdir()  # a folder where a file should go: the second write fails
    with pytest.raises(ValueError, match="is a directory"):
        results.write_together({tmp_path / "a.json": "new a", tmp_path / "b": "new b"})
    assert (tmp_path / "a.json").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b"]


# ---- user text is printed literally ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["[bold]x:smile:.txt", "a[/]b.txt", "[red]x[/red]"])
def test_paths_with_markup_print_literally(tmp_path, name):
    missing = tmp_path / name
    r = cli("scan", "--text", missing, "--out", tmp_path / "out")
    refused(r, str(missing))
    assert "😄" not in r.output


def test_a_module_task_name_prints_literally(tmp_path):
    r = cli("train", "--task", "nosuchmod:X", "--out", tmp_path / "out")
    refused(r, "--task nosuchmod:X: cannot import X from nosuchmod")
    assert "❌" not in r.output


# ---- malformed files of every kind attnlab reads ---------------------------------------------------------------------


def _broken_model(tmp_path: Path, tiny: Path, how: str) -> Path:
    import shutil

    if how == "gguf":
        f = tmp_path / "random.gguf"
        f.write_bytes(os.urandom(1000))
        return f
    d = tmp_path / how
    shutil.copytree(tiny, d)
    weights = d / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no-weights":
        weights.unlink()
    elif how == "bad-config":
        (d / "config.json").write_text('{"model_type": "llama",')
    elif how == "bad-tokenizer":
        (d / "tokenizer.json").write_text("{not json")
    return d


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("gguf", "random.gguf"),
        ("truncated", "model.safetensors"),
        ("no-weights", "has no weights"),
        ("bad-config", "config.json"),
        ("bad-tokenizer", "tokenizer"),
    ],
)
def test_a_malformed_model_is_a_clear_error_and_is_left_as_it_was(tmp_path, tiny, how, message):
    model = _broken_model(tmp_path, tiny, how)
    before = digest(model)
    r = scan(model, text_file(tmp_path), tmp_path / "out")
    refused(r, message)
    assert digest(model) == before
    assert not (tmp_path / "out").exists()


def test_a_file_shaped_cache_is_a_clear_error(tmp_path, monkeypatch):
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    monkeypatch.setenv("ATTNLAB_CACHE", str(cache))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(996))
    refused(scan(gguf, text_file(tmp_path), tmp_path / "out"), "cache")
    assert cache.read_text() == "not a folder"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny) -> dict[str, Path]:
    """A scan's and an edit's results.json, written by the CLI on the tiny model."""
    d = tmp_path_factory.mktemp("saved")
    text = text_file(d)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ATTNLAB_CACHE", str(d / "cache"))
        r = cli(
            "scan", "--model", tiny, "--text", text, "--probes", "sink,entropy,patterns", "--synthetic", "repeated", "--out", d / "scan"
        )
        assert r.exit_code == 0, r.output
        r = cli("edit", "--model", tiny, "--edit", "head_mask:heads=L0H1", "--eval", "ppl", "--out", d / "edit")
        assert r.exit_code == 0, r.output
    return {"scan": d / "scan" / "results.json", "edit": d / "edit" / "results.json"}


def test_report_renders_an_edit_result(tmp_path, saved):
    r = cli("report", saved["edit"], "--out", tmp_path / "edit.html")
    assert r.exit_code == 0 and "edit report" in r.stdout, r.output
    assert (tmp_path / "edit.html").read_text().startswith("<!doctype html>")
    (tmp_path / "f").write_text("a file")
    refused(cli("report", saved["edit"], "--out", tmp_path / "f" / "r.html"), f"--out {tmp_path / 'f' / 'r.html'} is inside")
    refused(cli("report", saved["edit"], "--out", saved["edit"]), "is the results file itself")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"meta": [1, 2]}', "has no meta block"),
        ('{"meta": {"format": "attnlab.result", "kind": "scan", "schema": 2}, "sites": NaN}', "not JSON"),
        ("[1, 2, 3]", "holds a JSON list"),
        ('{"meta": {"format": "other.tool"}}', "meta.format is 'other.tool'"),
        ("\x00\xff garbage", "not JSON"),
    ],
)
def test_report_of_a_malformed_file_is_refused_and_the_file_left_alone(tmp_path, content, message):
    f = tmp_path / "results.json"
    f.write_text(content)
    before = digest(tmp_path)
    refused(cli("report", f), str(f), message)
    assert digest(tmp_path) == before


def test_report_of_a_hand_edited_result_names_the_file(tmp_path, saved):
    data = json.loads(saved["edit"].read_text())
    data["meta"]["metrics"] = 5
    f = tmp_path / "results.json"
    f.write_text(json.dumps(data))
    refused(cli("report", f), f"{f} is not a well-formed attnlab edit result")
    assert not (tmp_path / "report.html").exists()


# ---- --debug, unexpected errors, devices -----------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(tmp_path, monkeypatch, saved):
    def boom(path):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(results, "load", boom)
    r = cli("report", saved["scan"], "--out", tmp_path / "r.html")
    assert r.exit_code == 1 and r.stderr.strip() == "error: RuntimeError: boom (an attnlab bug: run with --debug for the traceback)"
    r = cli("--debug", "report", saved["scan"], "--out", tmp_path / "r.html")
    assert isinstance(r.exception, RuntimeError)  # re-raised: typer prints the traceback
    (tmp_path / "bad.json").write_text("{}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TYPER_STANDARD_TRACEBACK": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "attnlab.cli", "--debug", "report", str(tmp_path / "bad.json")], capture_output=True, text=True, env=env
    )
    assert p.returncode == 1 and "Traceback" in p.stderr and "is not an attnlab result" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_train_on_cuda_without_a_gpu_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    refused(cli("train", "--task", TOY, "--device", "cuda", "--out", tmp_path / "out"), "--device cuda", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "out").exists()


# ---- nothing silently wrong ------------------------------------------------------------------------------------------


def test_a_requested_probe_runs_or_the_scan_is_refused(tmp_path, tiny):
    text = text_file(tmp_path)
    r = cli("scan", "--model", tiny, "--text", text, "--probes", "retrieval", "--synthetic", "repeated", "--out", tmp_path / "o")
    refused(r, "--synthetic needle")
    r = cli("scan", "--model", tiny, "--synthetic", "needle", "--probes", "sink,retrieval", "--out", tmp_path / "o")
    refused(r, "--probes sink read text or repeated tokens", "--synthetic repeated")
    refused(
        cli("scan", "--model", tiny, "--text", text, "--synthetic", "needle", "--probes", "sink", "--out", tmp_path / "o"), "add retrieval"
    )
    assert not (tmp_path / "o").exists()


def test_retrieval_among_the_probes_runs_needle_trials_and_only_then(tmp_path, tiny):
    text = text_file(tmp_path)
    r = cli("scan", "--model", tiny, "--text", text, "--probes", "sink,retrieval", "--needle-lengths", "800", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(data["findings"]) == ["sink", "retrieval"] and [i["kind"] for i in data["meta"]["inputs"]][:1] == ["text"]
    assert {i["kind"] for i in data["meta"]["inputs"][1:]} == {"needle"}
    r = cli("scan", "--model", tiny, "--text", text, "--max-len", "256", "--out", tmp_path / "d")  # default probes, a text
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "d" / "results.json").read_text())
    assert "retrieval" not in data["findings"] and {i["kind"] for i in data["meta"]["inputs"]} == {"text", "repeated"}
    assert {
        "what": "probe retrieval",
        "why": "its needle trials do not read --text or --prompts; add retrieval to --probes to run them",
    } in (data["meta"]["skipped"])
    assert {"patterns", "patterns_text"} <= set(data["findings"])  # the head detectors read the text and the repeated tokens


def test_scan_with_only_needle_trials_runs_the_retrieval_probe(tmp_path, tiny):
    r = cli("scan", "--model", tiny, "--synthetic", "needle", "--needle-lengths", "800", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(data["findings"]) == ["retrieval"] and {i["kind"] for i in data["meta"]["inputs"]} == {"needle"}
    assert (tmp_path / "o" / "report.html").is_file()


def test_edit_refuses_a_decoder_evaluation_on_an_encoder(tmp_path):
    bert = _save_tiny(tmp_path / "bert", "bert")
    r = cli("edit", "--model", bert, "--edit", "head_mask:heads=L0H1", "--eval", "ppl", "--out", tmp_path / "o")
    refused(r, "the ppl evaluation scores next-token logits, which needs a decoder", "is an encoder: choose from match")
    assert "model:" not in r.output  # refused before the model loaded


def test_edit_refuses_evaluations_beyond_the_trained_positions_unless_allowed(tmp_path):
    import transformers

    short = tmp_path / "short"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(short)
    _char_tokenizer().save_pretrained(short)
    r = cli("edit", "--model", short, "--edit", "head_mask:heads=L0H1", "--eval", "needle", "--out", tmp_path / "o")
    refused(r, "128 positions", "--allow-extrapolation")


# ---- hypothesis: random malformed input never leaks a traceback or writes non-finite numbers ------------------------


def _strict_finite(path: Path) -> None:
    """The file is strict JSON whose numbers are all finite, and meta.non_finite is empty."""

    def walk(x):
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))
    walk(data)
    assert not data["meta"]["non_finite"], data["meta"]["non_finite"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x[:4]):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.sampled_from(["scan", "edit"]), pick=st.integers(0, 10**6), value=_json)
def test_random_results_documents_never_leak_a_traceback(tmp_path_factory, saved, which, pick, value):
    data = json.loads(saved[which].read_text())
    paths = [p for p in _paths(data) if p]
    path = paths[pick % len(paths)]
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    d = tmp_path_factory.mktemp("doc")
    f = d / "results.json"
    f.write_text(json.dumps(data))
    with contextlib.suppress(ValueError, TypeError):  # the API: a clear error or a result
        results.load(f)
    r = cli("report", f, "--out", d / "r.html")
    assert "Traceback" not in r.output
    if r.exit_code == 0:
        assert (d / "r.html").read_text().startswith("<!doctype html>")
    else:
        refused(r)
        assert not (d / "r.html").exists()


_value = st.sampled_from(["0", "-1", "1e-40", "1e40", "inf", "-inf", "nan", "5-1", "99", "L9H9", "layers.99.attn", "x", "", "1,2", "[/]"])
_spec = st.tuples(
    st.sampled_from(["temperature", "head_scale", "head_mask", "drop_attention", "sink_redistribute", "knockout", "emphasis", "nosuch"]),
    st.lists(
        st.tuples(st.sampled_from(["tau", "factor", "heads", "layers", "top", "sites", "fraction", "mode", "bogus"]), _value), max_size=2
    ),
).map(lambda t: t[0] + (":" + ",".join(f"{k}={v}" for k, v in t[1]) if t[1] else ""))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=_spec | st.text(max_size=20))
def test_random_edit_specs_exit_cleanly_and_never_write_non_finite_numbers(tmp_path_factory, tiny, spec):
    out = tmp_path_factory.mktemp("edit") / "out"
    r = cli("edit", "--model", tiny, "--edit", spec, "--eval", "ppl", "--out", out)
    assert "Traceback" not in r.output
    if r.exit_code == 0:
        _strict_finite(out / "results.json")
    else:
        refused(r)
        assert not out.exists()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    option=st.sampled_from(
        ["--needle-lengths", "--probes", "--synthetic", "--max-len", "--backend", "--dtype", "--device", "--device-map"]
    ),
    value=st.sampled_from(["0", "-5", "nan", "inf", "1e9", "abc", "", ",", "sink,,", "[/]", "{", '{"": 3}', "cuda:7", "mps"])
    | st.text(max_size=10),
)
def test_random_scan_option_values_exit_cleanly(tmp_path_factory, option, value):
    out = tmp_path_factory.mktemp("opt") / "out"
    r = cli("scan", "--model", "no/such-model-dir", option, value, "--out", out)  # never gets to a model
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert r.exit_code == 2 or isinstance(r.exception, SystemExit), repr(r.exception)
    assert not out.exists()
