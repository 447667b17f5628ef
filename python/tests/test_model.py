# SPDX-License-Identifier: MIT
"""The model layer from Python: llama2.c and Hugging Face loading, logits of one sequence and
perplexity over windows, checked against the checkpoint header read in NumPy, an independent
log-softmax in NumPy and a Hugging Face folder written here from the same weights."""

import json
import os
import pathlib

import numpy as np
import pytest

import qift

SHARED = pathlib.Path(
    os.environ.get("QIFT_SHARED_DIR", pathlib.Path(__file__).resolve().parents[3] / "shared"))
MODELS = SHARED / "models"
STORIES = MODELS / "stories260K.bin"
PROSE = MODELS / "prose6M.bin"
PROSE_TEST = MODELS / "prose6M_test.npy"


def need(*paths):
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} is missing (the shared model folder; set QIFT_SHARED_DIR)")


@pytest.fixture(scope="module")
def stories():
    need(STORIES)
    return qift.LlamaModel.from_llama2c(str(STORIES))


def read_llama2c(path):
    """The header and weights of a llama2.c checkpoint, read in NumPy (shared classifier only)."""
    header = np.fromfile(path, dtype="<i4", count=7)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = (int(v) for v in header)
    assert vocab > 0, "this reader handles shared classifiers only"
    f = np.fromfile(path, dtype="<f4", offset=28)
    kv = dim // heads * kv_heads
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = f[pos:pos + n].reshape(shape)
        pos += n
        return a

    w = {"embed": take(vocab, dim), "rms_att": take(layers, dim), "wq": take(layers, dim, dim),
         "wk": take(layers, kv, dim), "wv": take(layers, kv, dim), "wo": take(layers, dim, dim),
         "rms_ffn": take(layers, dim), "w1": take(layers, hidden, dim),
         "w2": take(layers, dim, hidden), "w3": take(layers, hidden, dim), "rms_final": take(dim)}
    return header, w


def test_config_matches_header(stories):
    header = np.fromfile(STORIES, dtype="<i4", count=7)
    c = stories.config
    keys = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    assert [c[k] for k in keys] == header.tolist()
    assert c["head_dim"] == c["dim"] // c["n_heads"] and c["shared_classifier"]
    assert c["rope_theta"] == 10000.0 and c["norm_eps"] == pytest.approx(1e-5)
    assert "stories260K" in repr(stories)


def test_logits_shape_finite_and_deterministic(stories, rng):
    c = stories.config
    ids = rng.integers(0, c["vocab_size"], 40)
    a = stories.logits(ids)
    assert a.dtype == np.float32 and a.shape == (40, c["vocab_size"])
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(stories.logits(ids), a)
    # Causal: the logits of a prefix are the first rows (to rounding: other GEMM shapes).
    np.testing.assert_allclose(stories.logits(ids[:7]), a[:7], rtol=1e-4, atol=1e-4)
    # Lists and other integer dtypes are accepted.
    np.testing.assert_array_equal(stories.logits(ids.astype(np.int32).tolist()), a)
    np.testing.assert_array_equal(stories.logits(ids.astype(np.uint16)), a)


def test_bad_ids(stories):
    v, T = stories.config["vocab_size"], stories.config["seq_len"]
    with pytest.raises(ValueError, match=f"id {v} at index 2 is outside the vocabulary"):
        stories.logits([1, 2, v])
    with pytest.raises(ValueError, match="id -1 at index 0"):
        stories.logits(np.array([-1, 2], np.int64))
    with pytest.raises(ValueError, match="1-D"):
        stories.logits(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="empty"):
        stories.logits(np.array([], np.int32))
    with pytest.raises(TypeError, match="integer"):
        stories.logits(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="context"):
        stories.logits(np.ones(T + 1, np.int32))
    with pytest.raises(ValueError, match=f"id {v}"):
        stories.perplexity(np.full(T + 1, v, np.int64))
    with pytest.raises(qift.Error, match="no whole window"):
        stories.perplexity(np.ones(T, np.int32))


def test_perplexity_matches_numpy(stories, rng):
    """evaluate's perplexity = exp(mean NLL) of logits over windows, recomputed in float64."""
    T, v = stories.config["seq_len"], stories.config["vocab_size"]
    ids = rng.integers(0, v, 2 * T + 5)
    r = stories.perplexity(ids, windows=2)
    assert r["windows"] == 2 and r["tokens"] == 2 * T and "kl" not in r
    nll = 0.0
    for k in range(2):
        x = stories.logits(ids[k * T:(k + 1) * T]).astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
        nll -= (x[np.arange(T), ids[k * T + 1:(k + 1) * T + 1]] - lse).sum()
    nll /= 2 * T
    assert r["nll"] == pytest.approx(nll, rel=1e-5)
    assert r["perplexity"] == pytest.approx(np.exp(nll), rel=1e-4)
    # windows=0 takes every whole window; against itself KL is 0 and top-1 agreement 1.
    all_windows = stories.perplexity(ids, reference=stories)
    assert all_windows["windows"] == 2 and all_windows["perplexity"] == r["perplexity"]
    assert all_windows["kl"] == pytest.approx(0.0, abs=1e-9) and all_windows["top1"] == 1.0


def test_threads(stories, rng):
    """logits and perplexity release the GIL; concurrent calls give the serial results."""
    import threading
    T, v = stories.config["seq_len"], stories.config["vocab_size"]
    ids = rng.integers(0, v, T + 1)
    want = stories.perplexity(ids)["perplexity"], stories.logits(ids[:50])
    got = [None] * 4

    def work(i):
        got[i] = stories.perplexity(ids)["perplexity"], stories.logits(ids[:50])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p, x in got:
        assert p == want[0]
        np.testing.assert_array_equal(x, want[1])


def test_prose6m_perplexity():
    """Two windows of prose6M's test ids: evaluate equals the NumPy recomputation."""
    need(PROSE, PROSE_TEST)
    model = qift.LlamaModel.from_llama2c(str(PROSE))
    ids = np.load(PROSE_TEST)
    T = model.config["seq_len"]
    r = model.perplexity(ids, windows=2)
    assert r["tokens"] == 2 * T
    nll = 0.0
    for k in range(2):
        x = model.logits(ids[k * T:(k + 1) * T]).astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
        nll -= (x[np.arange(T), ids[k * T + 1:(k + 1) * T + 1]] - lse).sum()
    assert r["perplexity"] == pytest.approx(np.exp(nll / (2 * T)), rel=1e-4)
    # The published float32 perplexity on the first 32 windows (README, tests/test_model.cpp).
    assert model.perplexity(ids, windows=32)["perplexity"] == pytest.approx(114.6122, rel=1e-4)


def to_hf_rope(w, head_dim):
    """Hugging Face's permutation of q/k rows: row h·hd + j·hd/2 + i <- row h·hd + 2i + j."""
    rows, cols = w.shape
    return w.reshape(rows // head_dim, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(
        rows, cols)


def test_from_hf_equals_llama2c(stories, tmp_path, rng):
    header, w = read_llama2c(STORIES)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = (int(v) for v in header)
    hd = dim // heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
              "intermediate_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
              "max_position_embeddings": seq_len, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    t = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["rms_final"]}
    for l in range(layers):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = w["rms_att"][l]
        t[p + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
        t[p + "self_attn.q_proj.weight"] = to_hf_rope(w["wq"][l], hd)
        t[p + "self_attn.k_proj.weight"] = to_hf_rope(w["wk"][l], hd)
        t[p + "self_attn.v_proj.weight"] = w["wv"][l]
        t[p + "self_attn.o_proj.weight"] = w["wo"][l]
        t[p + "mlp.gate_proj.weight"] = w["w1"][l]
        t[p + "mlp.down_proj.weight"] = w["w2"][l]
        t[p + "mlp.up_proj.weight"] = w["w3"][l]
    qift.save_safetensors(str(tmp_path / "model.safetensors"), tensors=t)
    hf = qift.LlamaModel.from_hf(str(tmp_path))
    assert hf.config == stories.config
    ids = rng.integers(0, vocab, 24)
    np.testing.assert_array_equal(hf.logits(ids), stories.logits(ids))


def test_load_errors(tmp_path):
    with pytest.raises(qift.Error, match="not a directory"):
        qift.LlamaModel.from_hf(str(tmp_path / "missing"))
    with pytest.raises(qift.Error, match="cannot open"):
        qift.LlamaModel.from_llama2c(str(tmp_path / "missing.bin"))
    bad = tmp_path / "short.bin"
    bad.write_bytes(np.array([64, 172, 5, 8, 4, 512, 512], "<i4").tobytes() + b"\0" * 64)
    with pytest.raises(qift.Error, match="truncated"):
        qift.LlamaModel.from_llama2c(str(bad))
