"""The command line: a real small scan, and every kind of bad input exits non-zero without a traceback."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def attnlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def test_scan_of_a_text_file_writes_results_and_report(tmp_path, smollm2):
    text = tmp_path / "in.txt"
    text.write_text("Our revels now are ended. These our actors, as I foretold you, were all spirits and are melted into air.")
    r = attnlab("scan", "--text", str(text), "--probes", "sink,entropy,patterns", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["meta"]["settings"]["text"] == str(text) and set(data["findings"]) == {"sink", "entropy", "patterns", "patterns_text"}
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!doctype html>")
    r = attnlab("report", str(tmp_path / "out" / "results.json"), "--out", str(tmp_path / "again.html"))
    assert r.returncode == 0 and (tmp_path / "again.html").is_file()
    r = attnlab("report", str(tmp_path / "out" / "results.json"), "--out", str(tmp_path / "out" / "results.json"))
    assert r.returncode == 1 and "is the results file itself" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == data  # the results were not overwritten


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: (d / "e.txt").write_text("   \n"), ["--text", "{d}/e.txt"], "is empty"),
        (lambda d: (d / "b.txt").write_bytes(b"caf\xe9 latin-1"), ["--text", "{d}/b.txt"], "is not UTF-8 text (byte 0xe9 at offset 3)"),
        (lambda d: None, ["--text", "{d}/missing.txt"], "does not exist"),
        (lambda d: (d / "p.jsonl").write_text('{"text": "ok"}\nnot json\n'), ["--prompts", "{d}/p.jsonl"], "line 2 is not JSON"),
        (lambda d: (d / "p.jsonl").write_text('{"prompt": "x"}\n'), ["--prompts", "{d}/p.jsonl"], 'has no non-empty "text" field'),
        (lambda d: None, ["--probes", "sink,sinks"], "unknown probe 'sinks'"),
        (lambda d: None, ["--model", "gpt-17"], "unknown model 'gpt-17'"),
        (lambda d: (d / "f").write_text("x"), ["--out", "{d}/f"], "is a file"),
        (lambda d: None, ["--synthetic", "haystack"], "unknown synthetic input 'haystack'"),
        (lambda d: None, ["--needle-lengths", "5x"], "comma-separated integers"),
        (
            lambda d: (d / "long.txt").write_text("word " * 3000),
            ["--text", "{d}/long.txt", "--max-len", "128"],
            "more than max_len=128: pass truncate=True (--truncate)",
        ),
    ],
)
def test_bad_input_exits_nonzero_with_a_message_and_no_traceback(tmp_path, make, args, message):
    make(tmp_path)
    out = tmp_path / "out"
    r = attnlab("scan", *[a.format(d=tmp_path) for a in args], *([] if "--out" in args else ["--out", str(out)]))
    assert r.returncode != 0
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (out / "results.json").exists()


def test_report_of_a_bad_file_fails_cleanly(tmp_path):
    (tmp_path / "r.json").write_text("{}")
    r = attnlab("report", str(tmp_path / "r.json"))
    assert r.returncode == 1 and "is not an attnlab result" in r.stderr and "Traceback" not in r.stderr


def test_list_and_check_work():
    assert "neighborhood" in attnlab("list", "masks").stdout
    assert "retrieval" in attnlab("list", "probes").stdout
    assert attnlab("check", "--length", "40").returncode == 0


def test_edit_measures_before_and_after(tmp_path, smollm2):
    r = attnlab("edit", "--edit", "head_mask:heads=L0H0+L0H1,mode=zero", "--eval", "logit_diff", "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "e" / "results.json").read_text())
    (m,) = data["meta"]["metrics"]
    assert m["metric"] == "logit_diff" and m["examples"] == 20 and m["before"] != m["after"]
    assert data["meta"]["settings"]["edits"] == ["head_mask:heads=L0H0+L0H1,mode=zero"]
    assert data["meta"]["applied"] == ["HeadMask(heads=['L0H0', 'L0H1'], layers=None, mode='zero')"]
    assert (tmp_path / "e" / "report.html").read_text().startswith("<!doctype html>")
    r = attnlab("report", str(tmp_path / "e" / "results.json"), "--out", str(tmp_path / "again.html"))  # any kind re-renders
    assert r.returncode == 0 and "edit report" in r.stdout and "head_mask:heads=L0H0+L0H1" in (tmp_path / "again.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--edit", "no_such_edit"], "unknown edit 'no_such_edit'"),
        (["--edit", "drop_attention:top"], "malformed edit spec"),
        (["--edit", "head_mask:heads=L40H0"], "layer 40 is out of range: the model has layers 0..29"),
        (["--edit", "head_mask:heads=L3H12"], "head L3H12 is out of range: the model has heads 0..8"),
        (["--edit", "drop_attention:top=4", "--eval", "bleu"], "unknown evaluation 'bleu'"),
        (["--edit", "head_mask:heads=L1H1,colour=red"], "has no option 'colour'"),
    ],
)
def test_bad_edit_input_exits_nonzero_without_traceback(tmp_path, args, message):
    r = attnlab("edit", *args, "--out", str(tmp_path / "e"))
    assert r.returncode != 0 and message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "e" / "results.json").exists()
