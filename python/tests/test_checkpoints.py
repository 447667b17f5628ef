# SPDX-License-Identifier: MIT
"""safetensors from Python: files written by hand in NumPy read by qift (zero-copy views), qift's
writer read back, float16/bfloat16 conversions, and quantized matrices round-tripping."""

import json
import struct

import numpy as np
import pytest

import qift


def write_by_hand(path, tensors, metadata=None):
    """A safetensors file in plain Python: u64 header length, JSON header, data buffer."""
    codes = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64",
             np.dtype("uint8"): "U8", np.dtype("<i4"): "I32", np.dtype("bool"): "BOOL"}
    header, data = {}, b""
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def bf16(x):
    """float32 -> bfloat16 (round to nearest even) -> float32, in NumPy."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def test_read_a_file_written_by_numpy(rng, tmp_path):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    h = rng.standard_normal(7).astype(np.float16)
    d = rng.standard_normal((2, 2))
    u = np.arange(6, dtype=np.uint8).reshape(2, 3)
    b = np.array([True, False, True])
    path = tmp_path / "t.safetensors"
    # Ordered by descending element size, as the reference writer does (offsets stay aligned).
    write_by_hand(path, {"d": d, "a": a, "h": h, "u": u, "b": b}, {"format": "pt"})
    f = qift.SafetensorsFile(str(path))
    assert f.keys() == ["d", "a", "h", "u", "b"] and len(f) == 5 and "a" in f and "z" not in f
    assert f.metadata == {"format": "pt"} and f.dtype("h") == "F16" and f.shape("a") == (3, 5)
    for name, want in (("a", a), ("h", h), ("d", d), ("u", u), ("b", b)):
        got = f[name]
        assert got.dtype == want.dtype and got.shape == want.shape and not got.flags.writeable
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(f.to_float("h"), h.astype(np.float32))
    view = f["a"]
    del f  # the view keeps the mapping alive
    np.testing.assert_array_equal(view, a)
    with pytest.raises(qift.Error, match="no tensor 'z'"):
        qift.SafetensorsFile(str(path))["z"]
    with pytest.raises(qift.Error):
        qift.SafetensorsFile(str(tmp_path / "missing.safetensors"))


def test_writer_dtypes(rng, tmp_path):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    for dtype, expect, npdtype in (("F32", x, np.float32), ("F16", x.astype(np.float16), np.float16),
                                   ("BF16", bf16(x), np.float32), ("F64", x.astype(np.float64),
                                                                   np.float64)):
        path = str(tmp_path / f"{dtype}.safetensors")
        qift.save_safetensors(path, tensors={"x": x}, metadata={"k": "v"}, dtype=dtype)
        f = qift.SafetensorsFile(path)
        assert f.dtype("x") == dtype and f.metadata == {"k": "v"}
        assert f["x"].dtype == npdtype
        np.testing.assert_array_equal(f["x"], expect)


@pytest.mark.parametrize("levels", ["mnz", "asymmetric", "asymmetric_int4", "e2m1", "nf2"])
def test_quantized_round_trip(rng, tmp_path, levels):
    w = rng.standard_normal((8, 128)).astype(np.float32)
    q = qift.quantize(w, levels, group_size=64)
    path = str(tmp_path / "q.safetensors")
    qift.save_safetensors(path, {"model.layers.0.mlp": q})
    f = qift.SafetensorsFile(path)
    np.testing.assert_array_equal(f["model.layers.0.mlp.codes"], q.codes)
    np.testing.assert_array_equal(f["model.layers.0.mlp.scales"], q.scales)
    assert f.metadata["model.layers.0.mlp.group_size"] == "64"
    for source in (path, f):
        r = qift.load_quantized(source, "model.layers.0.mlp")
        assert r.levels == levels
        np.testing.assert_array_equal(r.dequantize(), q.dequantize())
    with pytest.raises(qift.Error, match="layers.1"):
        qift.load_quantized(f, "model.layers.1.mlp")
