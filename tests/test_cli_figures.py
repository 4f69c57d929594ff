"""attnlab scan --maps (the viewer's heads) and --figures (figure files beside the report), on scan and report."""

import json

from tests.test_cli_errors import _own_cache, cli, refused, text_file, tiny  # noqa: F401  (fixtures)


def test_scan_keeps_the_chosen_heads_maps_and_writes_figure_files(tmp_path, tiny):  # noqa: F811
    out = tmp_path / "o"
    r = cli("scan", "--model", tiny, "--text", text_file(tmp_path), "--probes", "sink,entropy", "--maps", "L1H0,L0H3", "--maps", "L1H2",
            "--figures", "png,svg", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    chosen = [(m["layer"], m["head"]) for m in data["maps"] if "chosen (--maps)" in m["why"]]
    assert chosen == [(1, 0), (0, 3), (1, 2)] and data["meta"]["settings"]["maps"] == ["L1H0", "L0H3", "L1H2"]
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"sink.first_token_mass.png", "sink.first_token_mass.svg", "attention_maps.png", "entropy.nats.svg"} <= names
    assert (out / "figures" / "attention_maps.png").read_bytes()[:4] == b"\x89PNG"
    r = cli("report", out / "results.json", "--out", tmp_path / "again" / "r.html", "--figures", "svg")
    assert r.exit_code == 0 and "figure files in" in r.stdout, r.output
    assert {p.suffix for p in (tmp_path / "again" / "figures").iterdir()} == {".svg"}


def test_bad_maps_and_formats_are_refused(tmp_path, tiny):  # noqa: F811
    text = text_file(tmp_path)
    refused(
        cli("scan", "--model", tiny, "--text", text, "--maps", "18:6", "--out", tmp_path / "a"),
        "cannot read the head '18:6'",
        "L<layer>H<head>",
    )
    refused(
        cli("scan", "--model", tiny, "--text", text, "--figures", "pdf", "--out", tmp_path / "b"), "unknown figure format 'pdf'", "png, svg"
    )
    refused(
        cli("scan", "--model", tiny, "--text", text, "--probes", "sink", "--maps", "L9H0", "--out", tmp_path / "c"),
        "maps asks for layer 9 head 0, and the model has layers 0..1 with 4 heads each",
    )
    assert not (tmp_path / "c").exists()
