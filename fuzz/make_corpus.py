#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the small seed corpora of the fuzz targets into fuzz/corpus/<target>/ from real files
(../shared/models) and NumPy-written arrays. Run from anywhere:

    /usr/bin/python3 fuzz/make_corpus.py [--shared ../shared]

Every seed stays below a few KiB (the fuzzers' input length follows the largest seed)."""
import argparse
import io
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy_bytes(a, fortran=False):
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(a) if fortran else a)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    args = ap.parse_args()
    models = os.path.join(args.shared, "models")
    rng = np.random.default_rng(2606)

    # .npy: every element type the reader takes, 0-d to 3-d, both byte orders, Fortran order,
    # and a cut of the real test ids.
    g = rng.standard_normal((3, 5))
    write("fuzz_npy", "f32_2d.npy", npy_bytes(g.astype("<f4")))
    write("fuzz_npy", "f64_be.npy", npy_bytes(g.astype(">f8")))
    write("fuzz_npy", "f16.npy", npy_bytes(g.astype("<f2")))
    write("fuzz_npy", "f32_fortran.npy", npy_bytes(g.astype("<f4"), fortran=True))
    write("fuzz_npy", "u2_bf16_bits.npy",
          npy_bytes((g.astype("<f4").view("<u4") >> 16).astype("<u2")))
    write("fuzz_npy", "i64_1d.npy", npy_bytes(np.arange(7, dtype="<i8")))
    write("fuzz_npy", "u8_3d.npy", npy_bytes(np.arange(24, dtype="u1").reshape(2, 3, 4)))
    write("fuzz_npy", "f32_0d.npy", npy_bytes(np.array(1.5, dtype="<f4")))
    ids = np.load(os.path.join(models, "prose6M_test.npy"))[:64].astype("<i4")
    write("fuzz_npy", "prose6M_test_cut.npy", npy_bytes(ids))

    # llama2.c checkpoints: a tiny model in the real layout (the header of prose6M with small
    # dimensions, shared and separate classifier), and prose6M's own header cut short.
    def checkpoint(dim, hidden, layers, heads, kv, vocab, seq, shared):
        head = dim // heads
        n = vocab * dim + layers * (2 * dim + dim * dim * 2 + 2 * dim * kv * head +
                                    3 * dim * hidden) + dim + seq * head
        if not shared:
            n += vocab * dim
        hdr = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq)
        return hdr + rng.standard_normal(n).astype("<f4").tobytes()

    write("fuzz_llama2c", "tiny_shared.bin", checkpoint(8, 16, 1, 2, 1, 6, 4, True))
    write("fuzz_llama2c", "tiny_classifier.bin", checkpoint(8, 12, 2, 2, 2, 5, 2, False))
    with open(os.path.join(models, "prose6M.bin"), "rb") as f:
        write("fuzz_llama2c", "prose6M_cut.bin", f.read(28 + 1024))

    # Tokenizer: prose6M's first 512 entries (a valid 512-token file) and English text.
    with open(os.path.join(models, "prose6M_tokenizer.bin"), "rb") as f:
        tok = f.read()
    at = 4
    for _ in range(512):
        (length,) = struct.unpack_from("<i", tok, at + 4)
        at += 8 + length
    cut = tok[:at]
    for i, text in enumerate([b"It was a bright cold day in April.",
                              "caf\u00e9 \u2014 na\u00efve \U0001F600".encode(),
                              b"\xff\xfe broken \xc3 utf-8"]):
        write("fuzz_tokenizer", "prose6M_512_%d" % i,
              struct.pack("<HH", 512 - 259, len(cut)) + cut + text)

    # safetensors: F32, F16, BF16 (as uint16 bits), I32 and U8 tensors with metadata, and the
    # first three tensors of prose6M in Hugging Face names (cut to 8 rows).
    def safetensors(tensors, metadata):
        header, data = {"__metadata__": metadata}, b""
        for name, dtype, shape, raw in tensors:
            header[name] = {"dtype": dtype, "shape": list(shape),
                            "data_offsets": [len(data), len(data) + len(raw)]}
            data += raw
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + data

    g32 = g.astype("<f4")
    write("fuzz_safetensors", "mixed.safetensors", safetensors([
        ("a.weight", "F32", g32.shape, g32.tobytes()),
        ("b.half", "F16", g.shape, g.astype("<f2").tobytes()),
        ("c.bf16", "BF16", g.shape, (g32.view("<u4") >> 16).astype("<u2").tobytes()),
        ("d.codes", "U8", (2, 4), np.arange(8, dtype="u1").tobytes()),
        ("e.ids", "I32", (3,), np.array([1, -2, 3], dtype="<i4").tobytes()),
    ], {"qift.levels": "mnz", "format": "pt"}))
    with open(os.path.join(models, "prose6M.bin"), "rb") as f:
        dim = struct.unpack("<7i", f.read(28))[0]
        emb = np.frombuffer(f.read(8 * dim * 4), dtype="<f4").reshape(8, dim)
    write("fuzz_safetensors", "prose6M_embed_cut.safetensors", safetensors([
        ("model.embed_tokens.weight", "F16", emb.shape, emb.astype("<f2").tobytes()),
    ], {}))

    # pack: shapes and bit widths; levels and mx: floats with specials.
    for i, (bits, rows, cols) in enumerate([(0, 3, 100), (1, 2, 257), (2, 5, 31)]):
        codes = rng.integers(0, 256, size=rows * cols, dtype=np.uint8)
        write("fuzz_pack", "seed_%d" % i, struct.pack("<BBH", bits, rows, cols) + codes.tobytes())
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3.4e38, 0.25, 6.0],
                       dtype="<f4")
    for i, rows in enumerate([0, 1, 3]):
        vals = np.concatenate([rng.standard_normal(60).astype("<f4"), special if i else []])
        write("fuzz_levels", "seed_%d" % i,
              struct.pack("<BB", rows, i) + vals.astype("<f4").tobytes())
        write("fuzz_mx", "seed_%d" % i,
              struct.pack("<BBQQ", i, rows, 2, 32) + (vals * 4).astype("<f4").tobytes())


if __name__ == "__main__":
    main()
