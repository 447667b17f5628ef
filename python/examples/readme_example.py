import numpy as np
import qift

rng = np.random.default_rng(0)
w = rng.standard_normal((256, 512)).astype(np.float32)   # a layer's weights [out][in]
x = rng.standard_normal((1024, 512)).astype(np.float32)  # calibration inputs [tokens][in]

# Round-to-nearest onto the MNZ levels {±0.5, ±1.5}, one scale per row.
q = qift.quantize(w, "mnz")
print(q, "relative MSE", qift.relative_mse(w, q.dequantize()))

# GPTQ against the inputs' Hessian, with a progress bar (the solve runs without the GIL).
r = qift.gptq(w, activations=x, levels="mnz", act_order=True,
              progress=qift.progress_bar("gptq"))
print("GPTQ relative MSE", qift.relative_mse(w, r.dequantized))

# Pack the codes for the kernels and run a W2A4 GEMV on one token.
packed = qift.PackedMatrix(r.quantized)
a = qift.quantize_activations(x[0])  # per-token INT4 codes and scale
y = qift.gemv(packed, a)
print("max |y - Q·a|", np.abs(y - r.dequantized @ a.dequantize()[0]).max())

try:
    qift.quantize(w, "mnz", group_size=100)
except ValueError as e:  # qift.Error, a ValueError with the C++ message
    print("error:", e)
