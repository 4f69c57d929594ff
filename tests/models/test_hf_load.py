"""Loading any model a user has: Hub ids from the local cache, directories, GGUF, placement and the weights' identity."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from attnlab.models import hf_load
from attnlab.models.hf_load import input_device, load

CHARS = "abcdefghijklmnopqrstuvwxyz .,;:'!?"


def _tiny_llama(layers: int = 4):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _char_tokenizer():
    """A saveable character-level tokenizer (BPE without merges) with a BOS token."""
    import transformers
    from tokenizers import Tokenizer, models, processors

    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "attnlab-cache"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama (4 layers, random weights) and its tokenizer, saved as a Hugging Face directory."""
    d = tmp_path_factory.mktemp("tiny")
    _tiny_llama().save_pretrained(d)
    _char_tokenizer().save_pretrained(d)
    return d


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _as_hub_cache(src, cache, repo_id: str) -> None:
    """Lay ``src`` out as huggingface_hub's cache does: blobs by sha256, a snapshot of links, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in src.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        (snapshot / f.name).symlink_to(os.path.join("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def hub_cache(tmp_path, tiny_dir, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _as_hub_cache(tiny_dir, cache, "attnlab-test/tiny-llama")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # transformers reads it at call time
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Hub ids ------------------------------------------------------------------------------------


def test_hub_id_loads_offline_from_the_local_cache_and_records_the_revision(hub_cache, tiny_dir):
    model, tok = load("attnlab-test/tiny-llama")
    w = model.attnlab_weights
    assert model.attnlab_identity == "attnlab-test/tiny-llama"
    assert w["source"] == w["name"] == "attnlab-test/tiny-llama" and w["revision"] == COMMIT
    assert w["format"] == "safetensors" and w["sha256"] == _sha256(tiny_dir / "model.safetensors")
    ids = tok("to be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, _tiny_llama()(input_ids=ids).logits)
    json.dumps(w)  # JSON-ready


def test_unknown_hub_id_offline_says_it_is_not_cached_and_how_to_get_it(hub_cache):
    with pytest.raises(ValueError) as e:
        load("attnlab-test/no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unknown model 'attnlab-test/no-such-model'")
    assert f"not in the local Hugging Face cache ({hub_cache})" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "hf download attnlab-test/no-such-model" in msg and "a local directory, a .gguf file or an embedded name" in msg


def test_a_hub_id_partly_in_the_cache_offline_says_so(hub_cache):
    (hub_cache / "models--attnlab-test--tiny-llama" / "snapshots" / COMMIT / "model.safetensors").unlink()
    with pytest.raises(
        ValueError,
        match=r"'attnlab-test/tiny-llama' is not complete in the local Hugging Face cache .* `hf download attnlab-test/tiny-llama`",
    ):
        load("attnlab-test/tiny-llama")


# --- local directories and GGUF -------------------------------------------------------------------


def test_directory_weights_record_names_the_exact_files(tiny_dir, tmp_path):
    model, _ = load(str(tiny_dir))
    w = model.attnlab_weights
    assert w["sha256"] == _sha256(tiny_dir / "model.safetensors") and w["revision"] is None
    assert w["source"] == str(tiny_dir.resolve()) and w["dtype"] == "float32" and w["description"] == "llama, 4 layers, 4 heads, 2 kv heads"
    assert len(json.loads((tmp_path / "attnlab-cache" / "sha256.json").read_text())) == 1  # hashed once, remembered
    sharded = tmp_path / "sharded"
    _tiny_llama().save_pretrained(sharded, max_shard_size="50KB")
    _char_tokenizer().save_pretrained(sharded)
    w = load(str(sharded))[0].attnlab_weights
    files = {p.name: _sha256(p) for p in sorted(sharded.glob("*.safetensors"))}
    assert len(files) > 1 and w["files"] == files
    assert w["sha256"] == hashlib.sha256("".join(f"{h}  {n}\n" for n, h in files.items()).encode()).hexdigest()


def test_gguf_hash_is_the_file_hash_and_is_kept_beside_the_conversion(smollm2):
    model, _ = smollm2
    w = model.attnlab_weights
    gguf = hf_load.resolve("smollm2-135m")[0]
    assert w["format"] == "gguf Q4_1 dequantised to float32" and w["name"] == "smollm2-135m"
    assert w["sha256"] == _sha256(gguf) and w["source"] == str(gguf.resolve())
    assert w["description"].startswith("SmolLM2-135M-Instruct")


@pytest.mark.parametrize(
    ("remove", "message"),
    [("config.json", "has no config.json"), ("model.safetensors", "has no weights"), ("tokenizer.json", "has no tokenizer")],
)
def test_a_directory_missing_a_part_is_refused_with_the_fix(tiny_dir, tmp_path, remove, message):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    for name in [remove, "tokenizer_config.json"] if remove == "tokenizer.json" else [remove]:
        (d / name).unlink()
    with pytest.raises(ValueError, match=message):
        load(str(d))


# --- placement ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "fp16"}, "dtype='fp16' is not a model dtype: give one of float32, bfloat16, float16, auto"),
        ({"dtype": torch.int8}, "is not a model dtype"),
        ({"device": "gpu"}, "device='gpu' is not a device: give cpu, cuda, cuda:N or mps"),
        ({"device_map": "everywhere"}, "give auto, balanced, balanced_low_0, sequential, a device"),
        ({"device": "cpu", "device_map": "auto"}, "give device or device_map, not both"),
        ({"max_memory": {"cpu": "1GiB"}}, "need a device_map: pass device_map='auto'"),
    ],
)
def test_bad_placement_lists_the_valid_choices(tiny_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load(str(tiny_dir), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_dir):
    with pytest.raises(ValueError, match=r"device='cuda' but .*use device='cpu'"):
        load(str(tiny_dir), device="cuda")


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16, "auto"])
def test_dtype_strings_and_torch_dtypes(tiny_dir, dtype):
    model, _ = load(str(tiny_dir), dtype=dtype, device="cpu")
    want = "float32" if dtype == "auto" else str(dtype).removeprefix("torch.")
    assert str(model.dtype).removeprefix("torch.") == want == model.attnlab_weights["dtype"]
    assert input_device(model) == torch.device("cpu")


# --- disk offload ---------------------------------------------------------------------------------


def _close(a, b, path="findings"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-5, f"{path}: {a} != {b}"
    elif not isinstance(a, str):  # notes quote numbers rounded; the numbers are checked above
        assert a == b, path


def test_a_model_offloaded_to_disk_scans_to_the_same_findings(tiny_dir, tmp_path):
    import attnlab

    cap = int(0.7 * (tiny_dir / "model.safetensors").stat().st_size)  # the embedding and a layer fit; the rest goes to disk
    offloaded, tok = load(str(tiny_dir), device_map="auto", max_memory={"cpu": cap}, offload_folder=tmp_path / "offload")
    assert {"cpu", "disk"} <= set(offloaded.hf_device_map.values()), offloaded.hf_device_map
    in_memory, _ = load(str(tiny_dir))
    text = "full fathom five thy father lies; of his bones are coral made."
    probes = ["sink", "entropy", "patterns", "extreme", "layer_importance"]
    want = attnlab.scan(in_memory, tok, [text], probes=probes, repeated=False)
    got = attnlab.scan(offloaded, tok, [text], probes=probes, repeated=False)
    _close(got.findings, want.findings)


def test_input_device_of_a_model_wholly_on_disk_is_the_execution_device(tiny_dir):
    model, tok = load(str(tiny_dir), device_map="auto", max_memory={"cpu": 1000})
    assert set(model.hf_device_map.values()) == {"disk"} and next(model.parameters()).device.type == "meta"
    assert input_device(model) == torch.device("cpu")
    ids = tok("we are such stuff as dreams are made on", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids.to(input_device(model))).logits, _tiny_llama()(input_ids=ids).logits)


# --- the command line -----------------------------------------------------------------------------


def _attnlab(*args, env):
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # a scan in a fresh interpreter: ~5 s alone, over 10 s on a busy machine
def test_cli_scans_a_hub_id_from_the_local_cache_on_a_chosen_device(hub_cache, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "ATTNLAB_CACHE": str(tmp_path / "attnlab-cache")}
    text = tmp_path / "in.txt"
    text.write_text("our revels now are ended. these our actors were all spirits.")
    out = tmp_path / "out"
    r = _attnlab("scan", "--model", "attnlab-test/tiny-llama", "--text", str(text), "--probes", "sink,entropy", "--device", "cpu",
                 "--dtype", "float32", "--out", str(out), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert set(json.loads((out / "results.json").read_text())["findings"]) == {"sink", "entropy"}


def test_cli_refuses_an_unknown_hub_id_and_a_bad_dtype_in_one_line(hub_cache, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "ATTNLAB_CACHE": str(tmp_path / "attnlab-cache")}
    r = _attnlab("scan", "--model", "attnlab-test/missing", "--out", str(tmp_path / "none"), env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    assert "not in the local Hugging Face cache" in " ".join(r.stderr.split()) and "hf download attnlab-test/missing" in r.stderr
    r = _attnlab("edit", "--edit", "head_mask:heads=L0H0", "--model", "attnlab-test/tiny-llama", "--dtype", "fp8", env=env)
    assert r.returncode == 1 and "is not a model dtype" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
