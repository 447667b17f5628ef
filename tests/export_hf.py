#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Test fixture for qift's Hugging Face loader (model/hf.hpp), NumPy only.

export: writes a llama2.c checkpoint as a Hugging Face Llama folder (config.json and
        model.safetensors, or N shards and model.safetensors.index.json) in float16, bfloat16 or
        float32, with the rotary row permutation that transformers' convert_llama_weights_to_hf.py
        applies to q_proj and k_proj.
    export_hf.py export CHECKPOINT.bin OUT_DIR {f16,bf16,f32} [--shards N]
npy:    writes every float16 bit pattern as '<f2' (256x256) and '>f2' files and every bfloat16 bit
        pattern as a 2-byte void array ('|V2', as np.save writes ml_dtypes' bfloat16) and as '<u2'
        bits, with np.save, for the .npy reader's test (NumPy writes, qift reads).
    export_hf.py npy OUT_DIR
compare: reads two safetensors files with the NumPy reader below and checks that every tensor of
        the first is in the second with the same dtype, shape and bytes (qift writes, NumPy reads).
    export_hf.py compare A.safetensors B.safetensors
"""
import json
import os
import struct
import sys

import numpy as np


def read_llama2c(path):
    """The arrays of a llama2.c checkpoint (header of 7 int32, then float32 arrays)."""
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head_dim = dim // heads
    kv_dim = head_dim * kv_heads
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > floats.size:
            sys.exit(f"export_hf.py: {path} is truncated")
        a = floats[pos:pos + n].reshape(shape)
        pos += n
        return a

    m = {"config": dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                        vocab=vocab, seq=seq, shared=shared, head_dim=head_dim)}
    m["embedding"] = take(vocab, dim)
    m["rms_att"] = take(layers, dim)
    m["wq"] = take(layers, dim, dim)
    m["wk"] = take(layers, kv_dim, dim)
    m["wv"] = take(layers, kv_dim, dim)
    m["wo"] = take(layers, dim, dim)
    m["rms_ffn"] = take(layers, dim)
    m["w1"] = take(layers, hidden, dim)
    m["w2"] = take(layers, dim, hidden)
    m["w3"] = take(layers, hidden, dim)
    m["rms_final"] = take(dim)
    take(2, seq, head_dim // 2)  # legacy freq_cis_real and freq_cis_imag, unused
    m["classifier"] = None if shared else take(vocab, dim)
    if pos != floats.size:
        sys.exit(f"export_hf.py: {path}: {floats.size - pos} floats left over")
    return m


def permute(w, n_heads):
    """transformers' convert_llama_weights_to_hf.py `permute`: per head, row 2i + j moves to
    row j * head_dim/2 + i, so that rotate_half's pairs (i, i + head_dim/2) are Meta's (2i, 2i+1)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def encode(a, dtype):
    """(safetensors dtype, little-endian bytes) of a float32 array rounded to dtype."""
    a = np.ascontiguousarray(a, dtype="<f4")
    if not np.all(np.isfinite(a)):
        sys.exit("export_hf.py: non-finite weights")
    if dtype == "f32":
        return "F32", a.tobytes()
    if dtype == "f16":
        h = a.astype("<f2")  # IEEE round to nearest even
        if not np.all(np.isfinite(h)):
            sys.exit("export_hf.py: a weight overflows float16")
        return "F16", h.tobytes()
    # bfloat16: the top 16 bits of float32, rounded to nearest even (weights are finite).
    u = a.view("<u4").astype(np.uint64)
    b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return "BF16", b.tobytes()


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype, shape, bytes), written in that order (one dtype here, so
    every offset stays aligned); header padded with spaces to a multiple of 8."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, data in tensors:
            f.write(data)
    return offset


def export(checkpoint, out_dir, dtype, shards):
    m = read_llama2c(checkpoint)
    c = m["config"]
    tensors = []

    def add(name, a):
        dt, data = encode(a, dtype)
        tensors.append((name, dt, a.shape, data))

    add("model.embed_tokens.weight", m["embedding"])
    for l in range(c["layers"]):
        p = f"model.layers.{l}."
        add(p + "input_layernorm.weight", m["rms_att"][l])
        add(p + "self_attn.q_proj.weight", permute(m["wq"][l], c["heads"]))
        add(p + "self_attn.k_proj.weight", permute(m["wk"][l], c["kv_heads"]))
        add(p + "self_attn.v_proj.weight", m["wv"][l])
        add(p + "self_attn.o_proj.weight", m["wo"][l])
        add(p + "post_attention_layernorm.weight", m["rms_ffn"][l])
        add(p + "mlp.gate_proj.weight", m["w1"][l])
        add(p + "mlp.up_proj.weight", m["w3"][l])
        add(p + "mlp.down_proj.weight", m["w2"][l])
    add("model.norm.weight", m["rms_final"])
    if not c["shared"]:
        add("lm_head.weight", m["classifier"])
    os.makedirs(out_dir, exist_ok=True)
    torch_dtype = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}[dtype]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c["dim"], "intermediate_size": c["hidden"],
        "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kv_heads"], "head_dim": c["head_dim"],
        "vocab_size": c["vocab"], "max_position_embeddings": c["seq"],
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": None,
        "tie_word_embeddings": c["shared"], "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": torch_dtype,
        "initializer_range": 0.02, "use_cache": True,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for old in os.listdir(out_dir):
        if old.startswith("model") and (old.endswith(".safetensors") or old.endswith(".json")):
            os.remove(os.path.join(out_dir, old))
    metadata = {"format": "pt"}
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata)
    else:
        per = -(-len(tensors) // shards)
        weight_map, total = {}, 0
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = tensors[s * per:(s + 1) * per]
            total += write_safetensors(os.path.join(out_dir, name), part, metadata)
            weight_map.update({t[0]: name for t in part})
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print(f"export_hf.py: wrote {len(tensors)} {tensors[0][1]} tensors of {checkpoint} to {out_dir}")


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of a safetensors file, validated as the specification says."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        sys.exit(f"{path}: header length {n} beyond the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    buffer = data[8 + n:]
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
    out, spans = {}, []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        if e["dtype"] not in sizes or int(np.prod(e["shape"])) * sizes[e["dtype"]] != end - b:
            sys.exit(f"{path}: tensor {name}: bad dtype or size")
        out[name] = (e["dtype"], tuple(e["shape"]), buffer[b:end])
        spans.append((b, end))
    spans.sort()
    covered = 0
    for b, end in spans:
        if b != covered:
            sys.exit(f"{path}: the data buffer has a gap or an overlap at {b}")
        covered = end
    if covered != len(buffer):
        sys.exit(f"{path}: {len(buffer) - covered} trailing bytes")
    return out


def compare(a_path, b_path):
    a, b = read_safetensors(a_path), read_safetensors(b_path)
    bad = [n for n in a if n not in b or a[n] != b[n]]
    if bad:
        sys.exit(f"compare: {len(bad)} of {len(a)} tensors differ, first {bad[0]}")
    print(f"compare: all {len(a)} tensors of {a_path} are identical in {b_path}")


def write_npy_fixtures(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    bits = np.arange(65536, dtype="<u2")
    np.save(os.path.join(out_dir, "f16_all.npy"), bits.view("<f2").reshape(256, 256))
    np.save(os.path.join(out_dir, "f16_all_be.npy"), bits.view("<f2").astype(">f2"))
    np.save(os.path.join(out_dir, "bf16_void.npy"), bits.view("V2"))
    np.save(os.path.join(out_dir, "bf16_bits.npy"), bits)
    print(f"export_hf.py: wrote the float16 and bfloat16 .npy fixtures to {out_dir}")


def main(argv):
    if len(argv) >= 4 and argv[0] == "export":
        shards = 1
        if len(argv) == 6 and argv[4] == "--shards":
            shards = int(argv[5])
        elif len(argv) != 4:
            sys.exit(__doc__)
        if argv[3] not in ("f16", "bf16", "f32"):
            sys.exit(__doc__)
        export(argv[1], argv[2], argv[3], shards)
    elif len(argv) == 2 and argv[0] == "npy":
        write_npy_fixtures(argv[1])
    elif len(argv) == 3 and argv[0] == "compare":
        compare(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
