# SPDX-License-Identifier: MIT
"""qift: two-bit LLM quantization and inference primitives, from NumPy.

The functions and classes come from the compiled extension ``qift._qift`` (bindings of the C++
header-only library); this package adds ``gemv``/``gemm`` dispatch over the weight formats and a
text progress bar for ``gptq``.

Arrays: float inputs may be float32, float64 or float16 (converted to float32); float32 arrays
whose last axis is contiguous are read in place, others are copied once. Results are new NumPy
arrays that own their memory (or read-only views kept alive by the object they belong to).
Errors raised by the library are ``qift.Error``, a subclass of ``ValueError``.
"""

try:
    from ._qift import *  # noqa: F401,F403
    from ._qift import Error, __version__  # noqa: F401
except ImportError as e:  # pragma: no cover - a broken install
    raise ImportError(
        "qift: the compiled extension qift._qift could not be imported (" + str(e) + "). Build "
        "the project (cmake --build) before `cmake --install`, and import it with the same Python "
        "it was built for."
    ) from e

from .progress import progress_bar  # noqa: F401

Error.__module__ = "qift"


def gemv(w, x, **options):
    """y = W·x for one token, for any weight format: ``w.gemv(x, **options)``.

    w: PackedMatrix (x float [cols] or QuantizedActivations), MXFP4Matrix (x float or an
    MXFP4Matrix row) or BinaryMatrix (x float, Int8Activations or QuantizedActivations)."""
    return w.gemv(x, **options)


def gemm(w, x, **options):
    """Y = X·Wᵀ for several tokens, for any weight format: ``w.gemm(x, **options)``."""
    return w.gemm(x, **options)
