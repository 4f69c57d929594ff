"""attnlab.results: one format for every result: round trips, strict JSON, atomic writes, dispatch, bad files, tables."""

import json
import math
import os
import stat
from dataclasses import asdict

import pytest
import torch

from attnlab import results
from attnlab.models import hf
from attnlab.probes import Entropy, Extreme, Findings, LayerImportance, Patterns, Sink
from attnlab.results import EditResult, ScanResult, load, make_meta, model_meta
from attnlab.train import SweepResult
from tests.probes.helpers import eager_and_instrumented, run
from tests.report.helpers import shown, specs


def same(got, want) -> bool:
    """``got`` (read back) equals ``want``, where every non-finite value of ``want`` reads back as NaN."""
    a, b = got, want
    if isinstance(b, float) and not math.isfinite(b):
        return isinstance(a, float) and math.isnan(a)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def strict_json(text: str):
    """Parse with a strict parser: NaN, Infinity and -Infinity are refused."""

    def refuse(name):
        raise AssertionError(f"{name} in a result file")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_scan():
    """A real small scan of a tiny llama (four probes, one input), with the loader's weights record."""
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    _, _, model = eager_and_instrumented(ids, num_hidden_layers=3)
    model.attnlab_identity = "tiny-llama"
    model.attnlab_weights = {"name": "tiny-llama", "source": "random", "format": "none", "sha256": "0" * 64, "revision": None}
    probes = {"sink": Sink(), "entropy": Entropy(), "patterns": Patterns(), "extreme": Extreme(), "layer_importance": LayerImportance()}
    run(model, ids, list(probes.values()))
    sites = hf.sites(model)
    findings = {name: asdict(p.findings(sites)) for name, p in probes.items()}
    meta = make_meta(
        "scan",
        settings={"probes": list(probes)},
        model=model_meta(model, layers=len(sites), heads=sites[0].num_heads),
        wall_s=0.5,
        inputs=[{"kind": "text", "tokens": 12}],
    )
    rows = [{"name": s.name, "layer": s.layer, "num_heads": s.num_heads, "num_kv_heads": s.num_kv_heads} for s in sites]
    return ScanResult(meta, rows, findings)


def edit_result() -> EditResult:
    meta = make_meta(
        "edit",
        settings={"edits": ["head_mask:heads=L0H0"], "evals": ["ppl"], "backend": "auto", "model": "tiny"},
        model=model_meta(identity="tiny", layers=2, heads=4),
        wall_s=1.0,
        applied=["HeadMask(heads=['L0H0'])"],
        composition="in order",
        metrics=[{"metric": "ppl", "before": 2.0, "after": 2.5, "difference": 0.5, "ci95": [math.nan, math.nan], "examples": 1}],
    )
    return EditResult(meta, {"ppl": {"before": [2.0, 3.0], "after": [2.5, math.inf]}})


def sweep_result() -> SweepResult:
    def one(mechanism, seed, final):
        return {
            "mechanism": mechanism,
            "seed": seed,
            "settings": {"target": None, "model": {"parameters": 1234}},
            "steps": [10, 20],
            "train_loss": [1.0, 0.5],
            "test_loss": [1.1, 0.6],
            "test_metric": [0.3, final],
            "final_metric": final,
            "steps_to_target": None,
            "steps_done": 20,
            "wall_s": 0.1,
            "steps_per_s": math.nan,
        }

    runs = [one("mha", 0, 0.8), one("mha", 1, 0.9), one("linear", 0, 0.5)]
    return SweepResult.from_runs(
        runs, {"settings": {"task": "toy", "model_options": {"dim": 16}, "mechanisms": ["mha", "linear"]}, "wall_s": 2.0}
    )


def test_every_kind_shares_one_meta_block(tiny_scan):
    for r, kind in ((tiny_scan, "scan"), (edit_result(), "edit"), (sweep_result(), "sweep")):
        m = r.meta
        assert (m["format"], m["kind"], m["schema"]) == ("attnlab.result", kind, 2)
        assert {"created", "wall_s", "versions", "settings", "model"} <= set(m)
        assert {"attnlab", "torch", "transformers", "python"} <= set(m["versions"]) and m["model"]["identity"]
    assert tiny_scan.meta["model"]["weights"]["sha256"] == "0" * 64  # the loader's record, when it set one
    assert "weights" not in edit_result().meta["model"]


def test_created_is_the_start_time_in_utc():
    m = make_meta("edit", settings={}, model={"identity": "x"}, wall_s=60.0, started=0.0)
    assert m["created"] == "1970-01-01T00:00:00+00:00" and m["wall_s"] == 60.0


@pytest.mark.parametrize("make", ["scan", "edit", "sweep"])
def test_save_load_round_trip_for_every_kind(make, tiny_scan, tmp_path):
    r = {"scan": lambda: tiny_scan, "edit": edit_result, "sweep": sweep_result}[make]()
    path = r.save(tmp_path / "results.json")
    text = path.read_text()
    again = load(path)
    assert type(again) is type(r) and type(type(r).load(path)) is type(r)
    assert results.to_json(again) == text  # what was read writes back the very same file
    got = again.to_dict()
    got["meta"] = {k: v for k, v in got["meta"].items() if k != "non_finite"}
    assert same(got, json.loads(json.dumps(r.to_dict())))  # tuples become lists; inf reads back as NaN
    assert again.html().startswith("<!doctype html>")


def test_non_finite_values_are_null_in_strict_json_and_come_back_as_nan(tmp_path):
    r = edit_result()
    path = r.save(tmp_path / "e.json")
    data = strict_json(path.read_text())  # a strict parser reads it
    assert data["examples"]["ppl"]["after"] == [2.5, None] and data["meta"]["metrics"][0]["ci95"] == [None, None]
    assert data["meta"]["non_finite"] == ["meta.metrics[0].ci95[0]", "meta.metrics[0].ci95[1]", "examples.ppl.after[1]"]
    again = EditResult.load(path)
    assert again.examples["ppl"]["before"] == [2.0, 3.0] and again.examples["ppl"]["after"][0] == 2.5
    assert math.isnan(again.examples["ppl"]["after"][1]) and all(math.isnan(x) for x in again.meta["metrics"][0]["ci95"])
    assert "ppl" in again.html()  # NaN renders


def test_a_scan_with_nan_findings_is_strict_json(tiny_scan, tmp_path):
    f = dict(tiny_scan.findings["layer_importance"])
    f["bars"] = {**f["bars"], "importance_attention": [0.1, math.nan, -math.inf]}
    r = ScanResult(tiny_scan.meta, tiny_scan.sites, {**tiny_scan.findings, "layer_importance": f})
    data = strict_json(r.save(tmp_path / "s.json").read_text())
    assert data["findings"]["layer_importance"]["bars"]["importance_attention"] == [0.1, None, None]
    assert data["meta"]["non_finite"] == [
        "findings.layer_importance.bars.importance_attention[1]",
        "findings.layer_importance.bars.importance_attention[2]",
    ]
    bars = specs(ScanResult.load(tmp_path / "s.json").html())["layer_importance.importance_attention"]["datasets"]["bars"]
    assert [b["value"] for b in bars] == [0.1, None, None]  # not finite: left out of the chart, never drawn as 0


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        edit_result().save(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_result_that_cannot_be_stored_writes_nothing(tmp_path):
    r = EditResult(edit_result().meta, {"ppl": {"before": [object()], "after": [1.0]}})
    with pytest.raises(TypeError, match=r"cannot store object at examples.ppl.before\[0\]"):
        r.save(tmp_path / "results.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = edit_result().save(tmp_path / "results.json")
        html = edit_result().report(tmp_path / "report.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and stat.S_IMODE(html.stat().st_mode) == mode


def test_load_of_one_kind_refuses_another(tmp_path):
    path = edit_result().save(tmp_path / "e.json")
    with pytest.raises(ValueError, match=r"e.json is not an attnlab scan result: it is an attnlab edit result"):
        ScanResult.load(path)
    with pytest.raises(ValueError, match="is not an attnlab sweep result"):
        SweepResult.load(path)


META = {"format": "attnlab.result", "kind": "scan", "schema": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"\xff\xfe", "is not an attnlab result (not JSON"),
        ("{not json", "is not an attnlab result (not JSON"),
        ('{"meta": {"x": NaN}}', "NaN is not strict JSON"),
        ("[1, 2]", "is not an attnlab result: it holds a JSON list"),
        ('{"meta": 3}', "it has no meta block"),
        ('{"meta": {"format": "other"}}', "meta.format is 'other', expected 'attnlab.result'"),
        (json.dumps({"meta": {**META, "kind": "plot"}}), "unknown result kind 'plot'"),
        (json.dumps({"meta": {**META, "schema": 3}}), "has schema 3: this attnlab reads attnlab.result schema 2"),
        (json.dumps({"meta": {"schema": 1}, "findings": {}}), "older format (schema 1)"),
        (json.dumps({"meta": {"schema": "attnlab.sweep/1"}, "runs": []}), "re-run the scan, edit or sweep"),
        (json.dumps({"meta": META, "sites": []}), "attnlab scan result without 'findings'"),
    ],
)
def test_bad_files_raise_a_value_error_naming_the_path(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as e:
        load(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_a_directory_is_neither_read_nor_written(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load(tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        edit_result().save(tmp_path)


def test_probes_key_findings_by_id_with_titles_apart(tiny_scan):
    ids = {probe: {k for part in ("heatmaps", "bars", "tables") for k in f[part]} for probe, f in tiny_scan.findings.items()}
    assert {"first_token_mass", "sink_rate", "sink_tokens"} <= ids["sink"]
    assert ids["entropy"] == {"normalized", "nats"}
    assert {"previous_token", "induction", "top_previous_token", "top_induction"} <= ids["patterns"]
    assert {"redundancy_ranking", "importance_attention", "importance_block"} <= ids["layer_importance"]
    assert {"value_ratio", "residual_ratio", "residual_peaks"} <= ids["extreme"]
    for probe, f in tiny_scan.findings.items():
        assert set(f["titles"]) == ids[probe] and all(k.isidentifier() for k in ids[probe]), probe
    assert tiny_scan.findings["sink"]["titles"]["first_token_mass"] == "first-token mass"
    text = shown(tiny_scan.html())  # ids name the figures; a reader sees titles
    assert "first-token mass (layer × head)" in text and "top induction heads" in text and "first_token_mass" not in text


def test_findings_refuse_titles_as_ids_and_ids_used_twice():
    with pytest.raises(ValueError, match="not a snake_case name"):
        Findings().heatmap("first-token mass", "first-token mass", [[1.0]])
    with pytest.raises(ValueError, match="used twice"):
        Findings().heatmap("mass", "mass", [[1.0]]).bar("mass", "mass per layer", [1.0])


def test_scan_to_pandas_is_one_tidy_table_of_every_number(tiny_scan):
    pd = pytest.importorskip("pandas")
    df = tiny_scan.to_pandas()
    assert list(df.columns) == ["probe", "metric", "layer", "head", "position", "token", "value"]
    assert set(df.probe) == {"sink", "entropy", "patterns", "extreme", "layer_importance"}
    f = tiny_scan.findings
    for probe, metric in (("sink", "first_token_mass"), ("patterns", "induction"), ("entropy", "nats")):
        part = df[(df.probe == probe) & (df.metric == metric)]
        grid = f[probe]["heatmaps"][metric]
        assert len(part) == sum(map(len, grid)) == 3 * 4
        for r in part.itertuples():
            assert r.value == grid[r.layer][r.head] and pd.isna(r.position) and pd.isna(r.token)
    bars = df[(df.probe == "extreme") & (df.metric == "residual_ratio")]
    assert bars.value.tolist() == f["extreme"]["bars"]["residual_ratio"] and bars.layer.tolist() == [0, 1, 2]
    assert bars["head"].isna().all()
    ranking = f["layer_importance"]["tables"]["redundancy_ranking"]
    part = df[df.metric == "redundancy_ranking.importance"]
    assert part.value.tolist() == [row["importance"] for row in ranking] and part.layer.tolist() == [row["layer"] for row in ranking]
    peaks = df[df.metric == "residual_peaks.norm"]
    rows = f["extreme"]["tables"]["residual_peaks"]
    assert peaks.position.tolist() == [r["position"] for r in rows] and peaks.token.tolist() == [r["token"] for r in rows]
    assert peaks.value.tolist() == [r["norm"] for r in rows]
    assert not any(m.endswith((".layer", ".head", ".position", ".token")) for m in df.metric)


def test_edit_and_sweep_to_pandas():
    pytest.importorskip("pandas")
    df = edit_result().to_pandas()
    assert list(df.columns) == ["metric", "example", "before", "after", "difference"]
    assert df.before.tolist() == [2.0, 3.0] and df.difference[0] == 0.5 and math.isinf(df.difference[1])
    s = sweep_result()
    df = s.to_pandas()
    assert list(df.columns) == ["mechanism", "seed", "metric", "value"]
    assert len(df) == 3 * 5
    finals = df[df.metric == "final_metric"]
    assert finals.value.tolist() == [r["final_metric"] for r in s.runs] and finals.mechanism.tolist() == ["mha", "mha", "linear"]
    assert df[df.metric == "steps_to_target"].value.isna().all()
