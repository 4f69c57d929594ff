"""CLI conventions (issue 17): list options both ways, help never cut, plain `list`, a torch-free --version, labelled edit output."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from attnlab.cli import _edit_specs, _listed, app, plain
from attnlab.papers import SHORT_NAMES
from tests.test_cli_errors import refused, tiny  # noqa: F401 (tiny: a fixture)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


# ---- list options: --x a,b and --x a --x b ---------------------------------------------------------------------------


def test_a_list_option_takes_commas_repeats_or_both():
    assert _listed(["sink,entropy", "patterns", " extreme , "]) == ["sink", "entropy", "patterns", "extreme"]
    assert _listed(None) == [] and _listed([",,"]) == []


def test_a_comma_starts_a_new_edit_spec_only_before_a_name():
    assert _edit_specs(["head_mask:heads=L1H2,mode=zero"]) == ["head_mask:heads=L1H2,mode=zero"]  # one spec, its own comma
    assert _edit_specs(["head_mask:heads=L1H2,mode=zero,temperature:tau=2,drop_attention"]) == [
        "head_mask:heads=L1H2,mode=zero",
        "temperature:tau=2",
        "drop_attention",
    ]
    assert _edit_specs(["drop_attention:top=4", "temperature:tau=2,layers=1-3+5"]) == [
        "drop_attention:top=4",
        "temperature:tau=2,layers=1-3+5",
    ]
    assert _edit_specs(["top=4"]) == ["top=4"]  # a value that starts with options stays whole: its parse error names it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scan", "--probes", "sink,entropy", "--probes", "sinks"], "unknown probe 'sinks'"),
        (["scan", "--synthetic", "repeated,haystack"], "unknown synthetic input 'haystack'"),
        (["scan", "--needle-lengths", "512", "--needle-lengths", "5x"], "comma-separated integers"),
        (["edit", "--edit", "head_mask:heads=L0H1,mode=zero,no_such_edit"], "no_such_edit"),
        (["edit", "--edit", "head_mask:heads=L0H1", "--eval", "ppl", "--eval", "bleu"], "unknown evaluation 'bleu'"),
        (["bench", "tasks", "--task", "mqar", "--mechanisms", "mha", "--mechanisms", "no_such_mechanism"], "no_such_mechanism"),
        (["train", "--task", "mqar", "--task-option", "pairs=4,vocab_size=64", "--task-option", "pairs=8"], "gives 'pairs' twice"),
    ],
)
def test_every_list_option_reads_every_item_given_either_way(tmp_path, args, message):
    refused(cli(*args, "--out", tmp_path / "o"), message)  # the last item is read: refused before any model work
    assert not (tmp_path / "o").exists()


def test_edit_specs_joined_by_commas_compose_in_order(tmp_path, tiny):  # noqa: F811
    r = cli("edit", "--model", tiny, "--edit", "head_mask:heads=L0H1,mode=zero,temperature:tau=2", "--eval", "ppl", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]["settings"]
    assert settings["edits"] == ["head_mask:heads=L0H1,mode=zero", "temperature:tau=2"]


# ---- help: plain text that wraps, never cut ---------------------------------------------------------------------------


def _commands(group: click.Group, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


@pytest.mark.parametrize("columns", [60, 200])
def test_help_is_never_cut_at_any_width(columns):
    words = lambda text: "".join(text.split())  # noqa: E731  (a word too long for its column is broken, not lost)
    for path, cmd in _commands(typer.main.get_command(app)):
        r = subprocess.run(
            [sys.executable, "-m", "attnlab.cli", *path, "--help"], capture_output=True, text=True, env={**ENV, "COLUMNS": str(columns)}
        )  # a real terminal width: a subprocess, as a user runs it (no torch is imported for help)
        assert r.returncode == 0, r.stderr
        assert "…" not in r.stdout, (path, r.stdout)
        long = [  # one long word may overflow, and an example command line stays whole, to be copied
            line for line in r.stdout.splitlines() if len(line) > columns and " " in line.strip() and "Example: attnlab" not in line
        ]
        assert not long, (path, long)
        shown = words(r.stdout)
        for p in cmd.params:
            if getattr(p, "help", None):
                assert words(p.help) in shown, (path, p.name)  # the whole help text, wrapped but complete
        scan_default = "sink, entropy, patterns, extreme, layer_importance, retrieval"
        assert path != ("scan",) or words(scan_default) in shown


# ---- list: plain text, papers by number and short name ----------------------------------------------------------------


def test_plain_turns_docstring_markup_into_text():
    assert plain("via ``torch.compile``") == "via torch.compile"
    assert plain("see :func:`~attnlab.core.attend`, :class:`attnlab.probes.Findings` and :ref:`the docs <d>`") == (
        "see attend, attnlab.probes.Findings and the docs"
    )
    assert plain("*masks* and **bold** but 2*3*4 and a*b") == "masks and bold but 2*3*4 and a*b"


@pytest.mark.parametrize("category", ["backends", "edits", "masks", "mechanisms", "probes", "tasks"])
def test_list_prints_plain_text_with_paper_short_names(category):
    r = cli("list", category, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "``" not in r.output and not re.search(r":[a-z]+:`", r.output)
    if category == "probes":
        assert "33 Retrieval heads" in r.output and "68 Active-dormant heads" in r.output
    if category == "tasks":
        assert "56 Zoology MQAR" in r.output


def test_paper_short_names_match_docs_papers_md():
    page = Path(__file__).resolve().parents[1] / "docs" / "papers.md"
    rows = dict(re.findall(r"^\| (\d+) \| (.*?) \| .*? \| .*? \|$", page.read_text(encoding="utf-8"), re.M))
    assert {int(n): name for n, name in rows.items()} == SHORT_NAMES


# ---- --version: no torch ----------------------------------------------------------------------------------------------


def test_version_imports_no_torch():
    code = "import sys; sys.argv = ['attnlab', '--version']; from attnlab.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'transformers', 'scipy')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("attnlab ") and r.stdout.splitlines()[-1] == "[]"


def test_import_attnlab_is_lazy_and_its_names_still_load():
    code = "import sys, attnlab; assert 'torch' not in sys.modules; attnlab.attend; attnlab.probes.Entropy; assert 'torch' in sys.modules"
    code += "; print(attnlab.scan.__module__, attnlab.masks.causal)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "attnlab.runs.scan"
    r = subprocess.run([sys.executable, "-c", "import attnlab; attnlab.nope"], capture_output=True, text=True, env=ENV, timeout=120)
    assert "module 'attnlab' has no attribute 'nope'" in r.stderr


# ---- edit: labelled output --------------------------------------------------------------------------------------------


def test_edit_table_is_labelled_and_says_calibrated_only_when_it_was(tmp_path, tiny):  # noqa: F811
    r = cli("edit", "--model", tiny, "--edit", "head_mask:heads=L0H1", "--eval", "ppl", "--out", tmp_path / "a", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for column in ("before", "after", "difference (after − before)", "95% CI of the difference", "better"):
        assert column in r.output
    assert "head_mask:heads=L0H1: before / after" in r.output and "calibrated" not in r.output
    assert json.loads((tmp_path / "a" / "results.json").read_text())["meta"]["calibrated"] == []
    r = cli("edit", "--model", tiny, "--edit", "drop_attention:top=1", "--eval", "ppl", "--out", tmp_path / "b", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    (c,) = json.loads((tmp_path / "b" / "results.json").read_text())["meta"]["calibrated"]
    assert c["edit"] == "drop_attention:top=1" and c["calibration"] == "probe" and c["passes"] == 4  # 4 windows of Lucrece
    assert f"calibrated on {c['on']}: drop_attention:top=1 -> " in " ".join(r.output.split())


def test_compare_progress_says_which_pass(tmp_path):
    from attnlab.edits import parse
    from attnlab.runs.edit import bind
    from attnlab.runs.evaluate import compare
    from tests.conftest import char_tokenizer, tiny_causal_lm

    model, tok = tiny_causal_lm("llama"), char_tokenizer()
    edit = parse("head_mask:heads=L0H1")
    bind(model, [edit])
    lines: list[str] = []
    compare(model, tok, [edit], ["logit_diff"], progress=lines.append, options={"logit_diff": {"n": 2}})
    assert lines == [
        "before: logit difference 1/2",
        "before: logit difference 2/2",
        "after: logit difference 1/2",
        "after: logit difference 2/2",
    ]
