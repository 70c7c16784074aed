"""Model inputs at half precision: how the ring buffer stores them.

A stream's buffered inputs are the largest part of its state (W of them per stream), and
they only feed training windows, replays and the persistence forecast, none of which needs
more than half precision's 11 significant bits: a normalised input, clipped to
``input_clip``, keeps 3 decimal digits. So the scoring kernel rounds each model input to
float16 once (:func:`round_half`), uses the rounded value everywhere (error, model input,
ring), and the ring keeps its bits. A float64 value goes through float32 first, in NumPy as
in the kernel: the same two roundings on both sides.

In jitted code the bits live in int16 arrays (Numba has no float16 type on the CPU); the
conversions compile to the F16C instructions (vcvtps2ph, vcvtph2ps).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.extending import intrinsic, overload


def half_bits(x: float) -> int:
    """The float16 bits of x (rounded to nearest, through float32) as an int16."""
    with np.errstate(over="ignore"):  # beyond float16's range: infinity, as in the kernel
        return int(np.float16(np.float32(x)).view(np.int16))


def half_value(bits: int) -> float:
    """The value of float16 bits held in an int16 (or any 16-bit integer)."""
    return float(np.array(bits).astype(np.int16).view(np.float16))


@intrinsic
def _half_bits(typingctx, x):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        v = args[0]
        if x.bitwidth > 32:
            v = builder.fptrunc(v, ir.FloatType())
        return builder.bitcast(builder.fptrunc(v, ir.HalfType()), ir.IntType(16))

    return types.int16(x), codegen


@intrinsic
def _half_value(typingctx, bits):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16:  # type: ignore[attr-defined]
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@overload(half_bits, jit_options={"error_model": "numpy"})
def _half_bits_impl(x):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    def impl(x):  # type: ignore[no-untyped-def]
        return _half_bits(x)  # type: ignore[call-arg]

    return impl


@overload(half_value, jit_options={"error_model": "numpy"})
def _half_value_impl(bits):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    def impl(bits):  # type: ignore[no-untyped-def]
        return _half_value(bits)  # type: ignore[call-arg]

    return impl
