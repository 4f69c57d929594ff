"""The model cache and model files: a lock, no stale temp folders, damaged files rebuilt, bad files named with their fix.

A tiny Llama written as a GGUF file here (2 layers, 100 tokens, 100 KB) converts in milliseconds,
so every case runs a real conversion; the subprocess cases (a SIGKILL, two processes at once) pay
only the interpreter's start.
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from attnlab.models import hf_cache, hf_load
from attnlab.models.hf_load import check_cache_writable, converted_dir, load
from tests.models.test_hf_load import _char_tokenizer, _tiny_llama

TEXT = "the rest is silence"


def write_tiny_gguf(
    path, arch: str = "llama", layers: int = 2, hidden: int = 32, heads: int = 4, kv: int = 2, ffn: int = 64, tied: bool = False
) -> None:
    """A random float32 Llama GGUF with a small byte-level BPE vocabulary, as llama.cpp lays one out.

    ``tied``: no ``output.weight`` (the output layer is the embedding, as in SmolLM2's GGUF).
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = ["<unk>", "<s>", "</s>", *(chr(c) for c in range(33, 127)), "Ġ", "Ġt", "he"]
    V = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (V - 3))
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def random(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    random("token_embd.weight", V, hidden)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        random(f"blk.{i}.attn_q.weight", hidden, hidden)
        random(f"blk.{i}.attn_k.weight", kv * hidden // heads, hidden)
        random(f"blk.{i}.attn_v.weight", kv * hidden // heads, hidden)
        random(f"blk.{i}.attn_output.weight", hidden, hidden)
        random(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        random(f"blk.{i}.ffn_up.weight", ffn, hidden)
        random(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    if not tied:
        random("output.weight", V, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    _tiny_llama(2).save_pretrained(d)
    _char_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "attnlab-cache"
    monkeypatch.setenv("ATTNLAB_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def reference_logits(tiny_gguf, tmp_path_factory):
    """The logits of a clean conversion in a cache of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("clean-cache")))
        return _logits(*load(str(tiny_gguf), progress=False))


def _logits(model, tok):
    with torch.no_grad():
        return model(**tok(TEXT, return_tensors="pt")).logits


def _temps(cache):
    return sorted((cache / "models").glob(".tmp-*"))


# --- a conversion is written whole, once, shared as the umask says ----------------------------------


def test_a_gguf_converts_once_and_records_every_file_it_wrote(tiny_gguf, cache, capsys, reference_logits):
    model, tok = load(str(tiny_gguf))
    assert capsys.readouterr().out.count("attnlab: converting tiny.gguf") == 1
    out = converted_dir(tiny_gguf)
    record = json.loads((out / "attnlab-source.json").read_text())
    assert record["architecture"] == "llama" and record["quantisation"] == "ALL_F32"
    assert record["files"]["model.safetensors"]["size"] == (out / "model.safetensors").stat().st_size
    assert {"config.json", "tokenizer.json"} <= set(record["files"])
    torch.testing.assert_close(_logits(model, tok), reference_logits)
    load(str(tiny_gguf))
    assert "converting" not in capsys.readouterr().out and _temps(cache) == []


def test_a_reinstalled_gguf_finds_its_conversion_and_a_changed_one_does_not(tiny_gguf, cache, tmp_path, capsys):
    """The conversion is keyed by content: a copy with a new path and mtime (a fresh pip install) reuses it."""
    import os
    import shutil

    load(str(tiny_gguf), progress=False)
    again = tmp_path / "reinstalled" / tiny_gguf.name
    again.parent.mkdir()
    shutil.copyfile(tiny_gguf, again)
    os.utime(again, (1e9, 1e9))
    assert converted_dir(again) == converted_dir(tiny_gguf)
    capsys.readouterr()
    load(str(again))
    assert "converting" not in capsys.readouterr().out
    changed = tmp_path / "changed" / tiny_gguf.name
    changed.parent.mkdir()
    write_tiny_gguf(changed, tied=True)
    assert converted_dir(changed) != converted_dir(tiny_gguf)


def test_a_tied_gguf_is_stored_under_both_names_and_loads_tied_without_a_warning(tmp_path, caplog):
    """SmolLM2's GGUF has no output.weight: the embedding is stored as model.embed_tokens.weight and lm_head.weight, equal."""
    from safetensors import safe_open

    gguf = tmp_path / "tied.gguf"
    write_tiny_gguf(gguf, tied=True)
    load(str(gguf), progress=False)  # converts
    with safe_open(converted_dir(gguf) / "model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), f.get_tensor("lm_head.weight"))
    caplog.clear()
    model, _ = load(str(gguf), progress=False)  # from the cache
    assert [r.getMessage() for r in caplog.records if r.name.startswith("transformers")] == []
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_conversion_missing_a_weight_is_refused_not_run_half_random(tmp_path):
    from safetensors.torch import load_file, save_file

    gguf = tmp_path / "tied.gguf"
    write_tiny_gguf(gguf, tied=True)
    load(str(gguf), progress=False)
    weights = converted_dir(gguf) / "model.safetensors"
    state = load_file(weights)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    record = converted_dir(gguf) / "attnlab-source.json"  # re-recorded, so the size check passes and the load goes on
    rec = json.loads(record.read_text())
    rec["files"]["model.safetensors"] = {"size": weights.stat().st_size, "sha256": hf_cache.hash_file(weights)}
    record.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"lacks model\.layers\.1\.mlp\.up_proj\.weight: remove .* to convert it again"):
        load(str(gguf), progress=False)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_cached_files_and_folders_follow_the_umask(tiny_gguf, model_dir, cache, umask):
    old = os.umask(umask)
    try:
        load(str(tiny_gguf), progress=False)
        load(str(model_dir), progress=False)  # remembers its hash in sha256.json
    finally:
        os.umask(old)
    out = converted_dir(tiny_gguf)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in [*out.iterdir(), cache / "sha256.json"]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


# --- damaged caches are rebuilt, with a message ----------------------------------------------------


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: _truncate(out / "model.safetensors"), r"model.safetensors: size \d+, expected \d+"),
        (lambda out: _truncate(out / "model.safetensors", keep=0.001), r"model.safetensors: size \d+, expected \d+"),
        (lambda out: (out / "model.safetensors").write_bytes(b"\xff" * 8), r"model.safetensors: size 8, expected \d+"),
        (lambda out: _flip_byte(out / "config.json", 10), r"config.json: sha256 \w+…, expected \w+…"),
        (lambda out: (out / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    ],
    ids=["half", "header-only", "overwritten", "config-edited", "tokenizer-gone"],
)
def test_a_damaged_cached_conversion_is_rebuilt_with_a_message(tiny_gguf, cache, capsys, reference_logits, damage, message):
    load(str(tiny_gguf), progress=False)
    damage(converted_dir(tiny_gguf))
    model, tok = load(str(tiny_gguf))
    out = capsys.readouterr().out
    assert "attnlab: the cached conversion of tiny.gguf is damaged (" in out and "); converting again" in out
    assert re.search(message, out), out
    assert hf_cache.damage(converted_dir(tiny_gguf), verify=True) is None
    torch.testing.assert_close(_logits(model, tok), reference_logits)


def test_changed_weights_of_the_same_size_are_found_with_verify(tiny_gguf, capsys, reference_logits, monkeypatch):
    monkeypatch.setattr(hf_cache, "SMALL", 10_000)  # the tiny weights (100 KB) stand for big ones, not hashed at every load
    load(str(tiny_gguf), progress=False)
    weights = converted_dir(tiny_gguf) / "model.safetensors"
    _flip_byte(weights, weights.stat().st_size - 3)  # inside the last tensor: the header still reads
    load(str(tiny_gguf))
    assert "damaged" not in capsys.readouterr().out  # by default only sizes, header and small files are checked
    monkeypatch.setenv("ATTNLAB_VERIFY_CACHE", "1")
    model, tok = load(str(tiny_gguf))
    assert "model.safetensors: sha256" in capsys.readouterr().out
    torch.testing.assert_close(_logits(model, tok), reference_logits)


def test_a_conversion_from_before_sizes_were_recorded_is_checked_by_its_header(tiny_gguf, capsys):
    load(str(tiny_gguf), progress=False)
    record = converted_dir(tiny_gguf) / "attnlab-source.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "files"}))
    load(str(tiny_gguf))
    assert capsys.readouterr().out == ""
    _truncate(converted_dir(tiny_gguf) / "model.safetensors")
    load(str(tiny_gguf))
    assert "is damaged (model.safetensors: size" in capsys.readouterr().out


def test_a_conversion_that_cannot_be_written_says_how_much_room_it_needs_and_leaves_nothing(tiny_gguf, cache, monkeypatch):
    def full(model, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_load, "_save", full)
    with pytest.raises(ValueError, match=r"cannot write the conversion of tiny.gguf to .*No space left.* about \d+ MiB; free space there"):
        load(str(tiny_gguf))
    assert _temps(cache) == [] and not converted_dir(tiny_gguf).exists()


# --- the lock and stale temp folders -----------------------------------------------------------------


def test_stale_temp_folders_of_this_model_are_removed_and_others_kept(tiny_gguf, cache):
    out = converted_dir(tiny_gguf)
    models = cache / "models"
    models.mkdir(parents=True)
    stale = models / f".tmp-{out.name}~abc123_x"
    other = models / ".tmp-other-model-1-2~abc123_x"
    legacy_old, legacy_new = models / ".tmp-k3j4h5g6", models / ".tmp-a1b2c3d4"
    for d in (stale, other, legacy_old, legacy_new):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 1000)
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    load(str(tiny_gguf), progress=False)
    assert _temps(cache) == sorted([other, legacy_new])  # another model's may be in progress; a fresh legacy one too
    stale.mkdir()
    load(str(tiny_gguf), progress=False)  # a valid cache: cleared too, the lock being free
    assert not stale.exists()


def test_two_threads_converting_at_once_convert_once(tiny_gguf, cache, capsys, monkeypatch):
    calls, real = [], hf_load._dequantise

    def slow(*a):
        calls.append(1)
        time.sleep(0.5)  # hold the lock long enough for the other thread to find it taken
        return real(*a)

    monkeypatch.setattr(hf_load, "_dequantise", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(load(str(tiny_gguf)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = capsys.readouterr().out
    assert len(calls) == 1 and len(results) == 2 and out.count("attnlab: converting tiny.gguf") == 1
    assert "attnlab: waiting for another process converting tiny.gguf" in out


CHILD = """
import os, sys, time
import safetensors.torch
real = safetensors.torch.save_file

def save_file(tensors, path, *a, **kw):
    real(tensors, path, *a, **kw)
    open(os.environ["MARK"], "w").close()
    time.sleep(float(os.environ["HOLD"]))  # the weights are written; the rename is still to come

safetensors.torch.save_file = save_file
while not os.path.exists(os.environ["GO"]):  # start together
    time.sleep(0.01)
from attnlab.models.hf_load import load
model, tok = load(sys.argv[1])
print("logits", float(model(**tok("the rest is silence", return_tensors="pt")).logits.sum()))
"""


def _child(gguf, cache, tmp_path, name, hold):
    env = {
        **os.environ,
        "ATTNLAB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "GO": str(tmp_path / "go"),
        "MARK": str(tmp_path / f"{name}.mark"),
        "HOLD": str(hold),
    }
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(gguf)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: ~5 s, more on a busy machine
def test_a_conversion_killed_while_writing_leaves_nothing_behind(tiny_gguf, cache, tmp_path, reference_logits):
    child = _child(tiny_gguf, cache, tmp_path, "killed", hold=600)
    (tmp_path / "go").touch()
    deadline = time.time() + 120
    while not (tmp_path / "killed.mark").exists():
        assert child.poll() is None and time.time() < deadline, child.communicate()[0]
        time.sleep(0.05)
    assert [p for p in _temps(cache) if (p / "model.safetensors").is_file()], "the child writes in a temp folder"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(_temps(cache)) == 1 and not converted_dir(tiny_gguf).exists()  # what a SIGKILL leaves
    model, tok = load(str(tiny_gguf), progress=False)
    assert _temps(cache) == [] and hf_cache.damage(converted_dir(tiny_gguf), verify=True) is None
    torch.testing.assert_close(_logits(model, tok), reference_logits)


@pytest.mark.slow  # two fresh interpreters at once: ~10 s
def test_two_processes_converting_at_once_convert_once_and_both_load(tiny_gguf, cache, tmp_path):
    children = [_child(tiny_gguf, cache, tmp_path, name, hold=2) for name in ("a", "b")]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    outs = [c.communicate(timeout=300)[0] for c in children]
    assert [c.returncode for c in children] == [0, 0], outs
    both = "".join(outs)
    assert both.count("attnlab: converting tiny.gguf") == 1, both
    assert both.count("attnlab: waiting for another process converting tiny.gguf") == 1, both
    logits = {line for line in both.splitlines() if line.startswith("logits")}
    assert len(logits) == 1 and _temps(cache) == []


# --- every bad model file is a ValueError naming the file and the fix ------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(os.urandom(1000)), r"is not a readable GGUF file \(size 1000; .*download it again"),
        (lambda p: p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(992)), "is not a readable GGUF file"),
        (lambda p: p.write_bytes(b""), r"is not a readable GGUF file \(size 0"),
        (lambda p: (write_tiny_gguf(p), _truncate(p)), "is not a readable GGUF file"),
        (lambda p: write_tiny_gguf(p, arch="nosuch"), r"is a GGUF of architecture 'nosuch', which transformers .* \(it can: llama, "),
    ],
    ids=["random-1000-bytes", "gguf-magic-then-junk", "empty", "truncated", "unsupported-architecture"],
)
def test_a_bad_gguf_file_is_a_value_error_naming_it(tmp_path, cache, make, message):
    path = tmp_path / "bad.gguf"
    make(path)
    with pytest.raises(ValueError, match=message) as e:
        load(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert _temps(cache) == []


def _rename(d, a, b):
    (d / a).rename(d / b)


def _shard_index(d):
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (d / "model.safetensors").unlink()


@pytest.mark.parametrize(
    ("spoil", "names", "message"),
    [
        (lambda d: _rename(d, "model.safetensors", "adapter_model.safetensors"), "", "has no weights"),
        (lambda d: _truncate(d / "model.safetensors"), "model.safetensors", r"is damaged \(size \d+, expected \d+\).*copy it again"),
        (lambda d: _truncate(d / "model.safetensors", 0.0001), "model.safetensors", r"is damaged \(size \d+, .*copy it again"),
        (_shard_index, "model.safetensors.index.json", r"names shards that .* lacks \(model-00002-of-00002.safetensors\)"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json", r"does not read as JSON .*save the model again"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", r"is not a model config"),
        (lambda d: (d / "config.json").write_text('{"model_type": "nosuch"}'), "", r"cannot load the (model|tokenizer) from .*nosuch"),
        (lambda d: (d / "tokenizer.json").write_text("{not json"), "", r"cannot load the tokenizer from .*tokenizer.save_pretrained"),
        (lambda d: (d / "tokenizer_config.json").write_text("[]"), "", r"cannot load the tokenizer from "),
    ],
    ids=["no-weights", "truncated", "truncated-header", "missing-shard", "config-not-json", "config-a-list", "config-unknown-type",
         "tokenizer-not-json", "tokenizer-config-a-list"],
)  # fmt: skip
def test_a_bad_model_directory_is_a_value_error_naming_the_file_and_left_alone(model_dir, spoil, names, message):
    spoil(model_dir)
    before = {f.name: f.read_bytes() for f in model_dir.iterdir()}
    with pytest.raises(ValueError, match=message) as e:
        load(str(model_dir))
    assert str(model_dir / names) in str(e.value) and "\n" not in str(e.value)
    assert {f.name: f.read_bytes() for f in model_dir.iterdir()} == before  # a user's files are never rebuilt


# --- the cache folder must be writable, and is checked before any work -----------------------------


def _read_only_place(tmp_path):
    if os.geteuid() != 0:
        d = tmp_path / "read-only"
        d.mkdir()
        d.chmod(0o555)
        return d / "cache"
    if sys.platform.startswith("linux") and os.path.isdir("/sys/kernel"):
        return "/sys/kernel/attnlab-cache"  # read-only even to root
    pytest.skip("root on a system without a read-only place to try")


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "read-only"])
def test_an_unwritable_cache_is_refused_before_converting_with_the_fix(tiny_gguf, tmp_path, monkeypatch, capsys, where):
    (tmp_path / "file").write_text("not a folder")
    path = {"a-file": tmp_path / "file", "under-a-file": tmp_path / "file" / "cache"}.get(where) or _read_only_place(tmp_path)
    monkeypatch.setenv("ATTNLAB_CACHE", str(path))
    with pytest.raises(ValueError, match=r"the attnlab cache .* is not a writable folder \(.*\): set ATTNLAB_CACHE to a writable folder"):
        check_cache_writable()
    with pytest.raises(ValueError, match="set ATTNLAB_CACHE to a writable folder") as e:
        load(str(tiny_gguf))
    assert str(path) in str(e.value) and "converting" not in capsys.readouterr().out
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_read_only_cache_that_holds_the_conversion_still_loads(tiny_gguf, cache, tmp_path, monkeypatch):
    load(str(tiny_gguf), progress=False)
    monkeypatch.setattr(hf_cache, "check_writable", lambda *a: pytest.fail("a whole conversion needs no write"))
    monkeypatch.setattr(hf_cache, "converting", lambda *a: pytest.fail("a whole conversion needs no lock"))
    assert load(str(tiny_gguf), progress=False)[0].attnlab_weights["format"] == "gguf ALL_F32 dequantised to float32"
    assert check_cache_writable(str(tiny_gguf)) == cache


def test_check_cache_writable_asks_only_what_the_model_needs(tiny_gguf, model_dir, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "file"))
    check_cache_writable(str(model_dir))  # a directory loads in place: the cache only remembers its hash, when it can
    with pytest.raises(ValueError, match="set ATTNLAB_CACHE to a writable folder"):
        check_cache_writable(str(tiny_gguf))  # this one must be converted
    with pytest.raises(ValueError, match="unknown model 'no/such/thing'"):
        check_cache_writable("no/such/thing")
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "new" / "cache"))
    assert check_cache_writable() == tmp_path / "new" / "cache" and (tmp_path / "new" / "cache").is_dir()
