"""Numba kernels of the LSTM: streaming step, sequence forward, BPTT.

Every kernel works on one flat parameter vector ``theta`` whose layout is described by a
:class:`ModelShape` and documented once, here:

    for each layer l = 0 .. layers-1 (input size D_l = n_inputs for l = 0, hidden otherwise):
        W_l  (D_l, 4H)     input weights
        U_l  (H, 4H)       recurrent weights
        b_l  (4H,)         bias
    head, when head_hidden K > 0:
        V1   (H, K)        hidden dense layer, activation ``head_activation`` (relu or tanh)
        a1   (K,)
        V2   (K, D_out)    output layer
        a2   (D_out,)
    head, when K == 0:
        V2   (H, D_out), a2 (D_out,)

    Gate blocks along the 4H axis, in this order: i (input), f (forget), g (candidate), o (output).

Row-vector convention: with z_t = [x_t, h_{t-1}] the gate pre-activations are
z_t @ [W; U] + b, which is the DESIGN.md equation W z + b with the weight matrix transposed
and split into its input and recurrent parts (so that the input projection of a whole
sequence is one matrix product). Per layer and step:

    i_t = σ(x_t W_i + h_{t-1} U_i + b_i)       f_t = σ(x_t W_f + h_{t-1} U_f + b_f)
    g_t = tanh(x_t W_g + h_{t-1} U_g + b_g)    o_t = σ(x_t W_o + h_{t-1} U_o + b_o)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t            h_t = o_t ⊙ tanh(c_t)

The head maps the top layer's h_t to ŷ_t, the prediction of the first D_out features of
x_{t+1}; with ``residual`` set it predicts the change, ŷ_t = x_t[:D_out] + head(h_t).

Kernels are dtype-generic: float32 for serving, float64 for checks. The small matrix
products of the time loops go through ``_matmul`` (register tiles; see there why), the
others through ``np.dot`` (BLAS); everything else is explicit loops over preallocated arrays.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.numpy_support import carray

# The one place where floating-point relaxations are chosen. "contract" lets LLVM fuse
# multiply-adds; reassociation is left off so float64 kernels match the reference to ~1e-12.
LSTM_FASTMATH = {"contract", "nsz"}  # a set: numba rejects a frozenset
# error_model="numpy": no zero-division check per "/", which would stop LLVM vectorising.
_KERNEL = dict(cache=True, nogil=True, fastmath=LSTM_FASTMATH, error_model="numpy")

ACTIVATION_RELU = 0
ACTIVATION_TANH = 1


class ModelShape(NamedTuple):
    """Sizes of one model; also the key to the layout of ``theta`` (module docstring)."""

    n_inputs: int
    n_outputs: int
    hidden: int
    layers: int
    head_hidden: int
    head_activation: int  # ACTIVATION_RELU or ACTIVATION_TANH
    residual: int  # 1: the head predicts x_{t+1} - x_t


# --------------------------------------------------------------------------- layout


@njit(cache=True, nogil=True)
def layer_offset(shape: ModelShape, l: int) -> int:  # pragma: no cover - jitted
    """Offset of W_l in theta."""
    H = shape.hidden
    G = 4 * H
    off = 0
    for k in range(l):
        d_in = shape.n_inputs if k == 0 else H
        off += d_in * G + H * G + G
    return off


@njit(cache=True, nogil=True)
def head_offset(shape: ModelShape) -> int:  # pragma: no cover - jitted
    return layer_offset(shape, shape.layers)


@njit(cache=True, nogil=True)
def param_count(shape: ModelShape) -> int:  # pragma: no cover - jitted
    H = shape.hidden
    K = shape.head_hidden
    n = head_offset(shape)
    if K > 0:
        n += H * K + K + K * shape.n_outputs + shape.n_outputs
    else:
        n += H * shape.n_outputs + shape.n_outputs
    return n


@njit(cache=True, nogil=True)
def layer_views(theta, shape: ModelShape, l: int):  # type: ignore[no-untyped-def]  # pragma: no cover
    """(W_l, U_l, b_l) as views into theta (or into a gradient of the same layout)."""
    H = shape.hidden
    G = 4 * H
    d_in = shape.n_inputs if l == 0 else H
    off = layer_offset(shape, l)
    W = theta[off : off + d_in * G].reshape((d_in, G))
    off += d_in * G
    U = theta[off : off + H * G].reshape((H, G))
    off += H * G
    b = theta[off : off + G]
    return W, U, b


@njit(cache=True, nogil=True)
def head_views(theta, shape: ModelShape):  # type: ignore[no-untyped-def]  # pragma: no cover
    """(V1, a1, V2, a2) as views; V1 and a1 are empty when the head has no hidden layer."""
    H = shape.hidden
    K = shape.head_hidden
    D = shape.n_outputs
    off = head_offset(shape)
    if K > 0:
        V1 = theta[off : off + H * K].reshape((H, K))
        off += H * K
        a1 = theta[off : off + K]
        off += K
        V2 = theta[off : off + K * D].reshape((K, D))
        off += K * D
    else:
        V1 = theta[off:off].reshape((H, 0))
        a1 = theta[off:off]
        V2 = theta[off : off + H * D].reshape((H, D))
        off += H * D
    a2 = theta[off : off + D]
    return V1, a1, V2, a2


# --------------------------------------------------------------------------- activations
# float64 (the checking precision) uses libm. float32 (serving and training) uses exp by
# range reduction, exp(y) = exp(y/16)^16 with a degree-11 Taylor polynomial on |y/16| <= 1.125:
# only multiply, add and divide, so the gate loops vectorise (libm calls do not), about 25x
# faster; absolute error below 1e-6 against float64 (tests/model/test_activations.py).
# The plain-Python bodies of sigmoid and tanh below run only with NUMBA_DISABLE_JIT=1.

_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(12))


def sigmoid(x: float) -> float:
    """σ(x); the typed overloads below are what jitted code runs."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= -700.0 else 0.0


def tanh(x: float) -> float:
    return math.tanh(x)


@njit(fastmath=LSTM_FASTMATH, error_model="numpy")
def _exp_f32(y):  # type: ignore[no-untyped-def]  # pragma: no cover
    """exp(y) for float32 y in [-18, 18]."""
    r = y * np.float32(0.0625)
    p = np.float32(_EXP_TAYLOR[11])
    p = p * r + np.float32(_EXP_TAYLOR[10])
    p = p * r + np.float32(_EXP_TAYLOR[9])
    p = p * r + np.float32(_EXP_TAYLOR[8])
    p = p * r + np.float32(_EXP_TAYLOR[7])
    p = p * r + np.float32(_EXP_TAYLOR[6])
    p = p * r + np.float32(_EXP_TAYLOR[5])
    p = p * r + np.float32(_EXP_TAYLOR[4])
    p = p * r + np.float32(_EXP_TAYLOR[3])
    p = p * r + np.float32(_EXP_TAYLOR[2])
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    p = p * p
    p = p * p
    p = p * p
    return p * p


_ACT_OPTIONS = {"fastmath": LSTM_FASTMATH, "error_model": "numpy"}


@overload(sigmoid, jit_options=_ACT_OPTIONS)
def _sigmoid_impl(x):  # type: ignore[no-untyped-def]  # pragma: no cover
    if x == types.float32:

        def sigmoid_f32(x):  # type: ignore[no-untyped-def]
            # Clamped where σ is within 2e-8 of 0 or 1, so exp stays in range.
            x = x if x > np.float32(-18.0) else np.float32(-18.0)
            x = x if x < np.float32(18.0) else np.float32(18.0)
            return np.float32(1.0) / (np.float32(1.0) + _exp_f32(-x))

        return sigmoid_f32

    def sigmoid_exact(x):  # type: ignore[no-untyped-def]
        return 1.0 / (1.0 + np.exp(-x))

    return sigmoid_exact


@overload(tanh, jit_options=_ACT_OPTIONS)
def _tanh_impl(x):  # type: ignore[no-untyped-def]  # pragma: no cover
    if x == types.float32:

        def tanh_f32(x):  # type: ignore[no-untyped-def]
            # tanh(x) = 2σ(2x) - 1; σ's clamp at ±18 is tanh's at ±9 (within 2e-8 of ±1).
            return np.float32(2.0) * sigmoid(np.float32(2.0) * x) - np.float32(1.0)

        return tanh_f32

    def tanh_exact(x):  # type: ignore[no-untyped-def]
        return np.tanh(x)

    return tanh_exact


@intrinsic
def _f32_bits(typingctx, x):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The bits of a float32 as an int32 (a bitcast; vectorises)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def _bits_f32(typingctx, i):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The float32 with the low 32 bits of integer i as its bits."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        v = args[0]
        if i.bitwidth > 32:  # type: ignore[attr-defined]
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


# exp(r) on |r| <= ln(2)/2: degree-5 Chebyshev interpolant, relative error 1.0e-7.
_EXP_POLY = (
    1.0000000754548972,
    1.000000010771568,
    0.49998869378306193,
    0.1666650526041718,
    0.04191750724932903,
    0.008369148490146382,
)
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_ROUND = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 below 2**22 to an integer


def neg_exp(x: float) -> float:
    """exp(-x) with x clamped to +-18 (float32) or +-40 (float64): where sigmoid(x) is
    within the type's precision of 0 or 1, so products of such terms stay finite. The
    streaming step builds its gates from these (see _cell_update_rows).

    float32: exp(y) = 2**n exp(r) with n = round(y / ln 2), r = y - n ln 2, exp(r) by
    _EXP_POLY, and 2**n added into the exponent bits: 12 vector operations, where the
    training kernels' _exp_f32 takes 17 (this pass is bound by them), and a relative error
    of 2e-7 (_exp_f32: 4e-6). float64: libm.
    """
    limit = 18.0 if isinstance(x, np.float32) else 40.0
    return math.exp(-min(max(x, -limit), limit))


@overload(neg_exp, jit_options=_ACT_OPTIONS)
def _neg_exp_impl(x):  # type: ignore[no-untyped-def]  # pragma: no cover
    if x == types.float32:
        f = np.float32
        c0, c1, c2, c3, c4, c5 = (f(c) for c in _EXP_POLY)
        log2e, ln2, rnd = f(-_LOG2E), f(_LN2), f(_ROUND)

        def neg_exp_f32(x):  # type: ignore[no-untyped-def]
            x = x if x > f(-18.0) else f(-18.0)
            x = x if x < f(18.0) else f(18.0)
            t = x * log2e + rnd  # n = round(-x / ln 2) sits in t's low mantissa bits
            n = t - rnd
            r = n * -ln2 - x  # -x - n ln 2
            p = ((((c5 * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
            return _bits_f32(_f32_bits(p) + (_f32_bits(t) << 23))  # type: ignore[call-arg]

        return neg_exp_f32

    def neg_exp_exact(x):  # type: ignore[no-untyped-def]
        x = x if x > -40.0 else -40.0
        x = x if x < 40.0 else 40.0
        return np.exp(-x)

    return neg_exp_exact


# --------------------------------------------------------------------------- small products
# The products inside the time loops are small, (B, H) @ (H, 4H) and (B, 4H) @ (4H, H), and
# a training step has 2T of them. Through np.dot, OpenBLAS spends most of such a call
# packing operands: 6.0 us per (64, 32) @ (32, 128) with its Haswell (AVX2) kernels, which
# it runs where OPENBLAS_CORETYPE=Haswell is set (as on our benchmark machine), 2.1 us with
# the AVX-512 kernels it picks itself on that Zen 5. _matmul takes 2.4 us whichever BLAS is
# installed: it keeps a 4 x 32 tile of the output in registers, as 2 x 16-float AVX-512
# FMAs per tile row. That depends on LLVM (22, numba 0.68) seeing constant indices into a
# stack buffer after unrolling: with the tile's loop over rows outside its loop over
# columns, the same code ran 70x slower. bench/train_step.py shows it if that ever changes.
_TILE_ROWS = 4
_TILE_COLS = 32
_TILE = _TILE_ROWS * _TILE_COLS


def _tile_buffer(size: int, like: np.ndarray) -> np.ndarray:
    """An uninitialised 1-d array of ``size`` elements of like's dtype; jitted code gets it
    on the stack (overload below): LLVM keeps such a buffer in registers when every index
    into it is a constant after unrolling, which it cannot do with np.empty (heap)."""
    return np.empty(size, like.dtype)  # unused: without the JIT, _matmul calls np.dot


@intrinsic
def _stack_empty(typingctx, size, like):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Pointer to ``size`` (a compile-time int) elements of like's dtype, on the stack."""
    if not isinstance(size, types.IntegerLiteral) or not isinstance(like, types.Array):
        return None
    dtype = like.dtype
    n = size.literal_value

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return cgutils.alloca_once(builder, context.get_value_type(dtype), size=n)

    return types.CPointer(dtype)(size, like), codegen


@overload(_tile_buffer, prefer_literal=True)
def _tile_buffer_impl(size, like):  # type: ignore[no-untyped-def]  # pragma: no cover
    if not isinstance(size, types.IntegerLiteral):
        return None

    def stack_buffer(size, like):  # type: ignore[no-untyped-def]
        # (mypy reads the intrinsic's Python signature, typing context included)
        return carray(_stack_empty(size, like), (size,))  # type: ignore[call-arg]

    return stack_buffer


def _matmul(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """c = a @ b for a (M, K), b (K, N), c (M, N); b and c C-contiguous, a may be a transposed
    view. Jitted code runs the overload below; this body only with NUMBA_DISABLE_JIT=1, where
    the tiled loops in plain Python would make training tests take minutes.
    """
    np.dot(a, b, out=c)


@overload(_matmul, jit_options=_ACT_OPTIONS)
def _matmul_impl(a, b, c):  # type: ignore[no-untyped-def]  # pragma: no cover
    def matmul_tiled(a, b, c):  # type: ignore[no-untyped-def]
        """Full tiles of _TILE_ROWS x _TILE_COLS outputs accumulate in registers; the rows and
        columns left over (none at H = 32, B = 64) go through plain loops. Sums over k in
        order, like the naive product, so float64 matches a reference."""
        M, K = a.shape
        N = b.shape[1]
        acc = _tile_buffer(_TILE, c)
        a_k = _tile_buffer(_TILE_ROWS, c)
        M_full = M - M % _TILE_ROWS
        N_full = N - N % _TILE_COLS
        for i0 in range(0, M_full, _TILE_ROWS):
            for j0 in range(0, N_full, _TILE_COLS):
                for q in range(_TILE):
                    acc[q] = 0.0
                for k in range(K):
                    b_k = b[k, j0 : j0 + _TILE_COLS]
                    for r in range(_TILE_ROWS):
                        a_k[r] = a[i0 + r, k]
                    for jj in range(_TILE_COLS):
                        for r in range(_TILE_ROWS):
                            acc[r * _TILE_COLS + jj] += a_k[r] * b_k[jj]
                for r in range(_TILE_ROWS):
                    c_r = c[i0 + r, j0 : j0 + _TILE_COLS]
                    for jj in range(_TILE_COLS):
                        c_r[jj] = acc[r * _TILE_COLS + jj]
        # Edges: the columns right of the tiles, then the rows below them. k runs outermost
        # so that a transposed ``a`` is read along its rows. Views start at column 0 (as in
        # _cell_update: an index LLVM cannot prove non-negative keeps a loop scalar).
        if N_full < N:
            for i in range(M_full):
                c[i, N_full:] = 0.0
            for k in range(K):
                b_k = b[k, N_full:]
                for i in range(M_full):
                    a_ik = a[i, k]
                    c_i = c[i, N_full:]
                    for j in range(N - N_full):
                        c_i[j] += a_ik * b_k[j]
        if M_full < M:
            c[M_full:] = 0.0
            for k in range(K):
                b_k = b[k]
                for i in range(M_full, M):
                    a_ik = a[i, k]
                    c_i = c[i]
                    for j in range(N):
                        c_i[j] += a_ik * b_k[j]

    return matmul_tiled


# --------------------------------------------------------------------------- cell pieces


@njit(**_KERNEL)
def _cell_update(gates, c_prev, c_out, h_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Activate pre-activations ``gates`` (B, 4H) in place, then c_t and h_t (B, H).

    Two passes over simple loops rather than one fused loop: each pass touches few arrays,
    so LLVM can prove the accesses independent and vectorise (a fused loop with eight
    streams of loads and stores exceeds its alias-check budget and runs scalar, ~20x slower).
    """
    B = gates.shape[0]
    H = c_prev.shape[1]
    for n in range(B):
        # Each gate block through a view that starts at index 0: with a loop index that
        # LLVM cannot prove non-negative (range(2 * H, 3 * H)), numba's negative-index
        # wraparound stays in the address and the loop runs scalar (this pass took 7x as
        # long at H=32, B=64).
        i_f = gates[n, : 2 * H]
        for j in range(2 * H):
            i_f[j] = sigmoid(i_f[j])
        g_t = gates[n, 2 * H : 3 * H]
        for j in range(H):
            g_t[j] = tanh(g_t[j])
        o_t = gates[n, 3 * H :]
        for j in range(H):
            o_t[j] = sigmoid(o_t[j])
    for n in range(B):
        row = gates[n]
        for j in range(H):
            c_t = row[H + j] * c_prev[n, j] + row[j] * row[2 * H + j]
            c_out[n, j] = c_t
            h_out[n, j] = row[3 * H + j] * tanh(c_t)


@njit(**_KERNEL)
def _head_forward(h_top, x_in, theta, shape: ModelShape, q_out, y_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """ŷ = head(h_top) (+ x_in[:, :D_out] when residual). h_top (N, H), x_in (N, D_in)."""
    V1, a1, V2, a2 = head_views(theta, shape)
    if shape.head_hidden > 0:
        np.dot(h_top, V1, q_out)
        N, K = q_out.shape
        for n in range(N):
            for k in range(K):
                v = q_out[n, k] + a1[k]
                if shape.head_activation == ACTIVATION_RELU:
                    q_out[n, k] = v if v > 0.0 else 0.0
                else:
                    q_out[n, k] = tanh(v)
        np.dot(q_out, V2, y_out)
    else:
        np.dot(h_top, V2, y_out)
    N, D = y_out.shape
    for n in range(N):
        for d in range(D):
            y_out[n, d] += a2[d]
            if shape.residual:
                y_out[n, d] += x_in[n, d]


# --------------------------------------------------------------------------- streaming step
# The scoring kernel steps a wave of streams whose rows lie anywhere in a table of a million:
# their state is gathered into contiguous scratch (whole rows, vectorised copies), stepped
# there with the same register-tiled products as training, and scattered back. The public
# lstm_step keeps its (h, c) interface for callers with separate tables and allocates its
# scratch per call; lstm_step_rows takes the scratch from the caller.


def prefetch(arr: np.ndarray, byte_offset: int | np.integer) -> None:
    """Hint the CPU to fetch the cache line ``byte_offset`` bytes into arr's data, for
    reading (llvm.prefetch, locality 3). No effect on results, and an address outside the
    array is harmless: prefetches never fault. Jitted code runs the overload below; this
    body (a no-op) only with NUMBA_DISABLE_JIT=1."""


def prefetch_l2(arr: np.ndarray, byte_offset: int | np.integer) -> None:
    """As :func:`prefetch`, into the L2 cache only (locality 2, prefetcht1), for lines
    needed later: they do not hold one of the few L1 miss buffers while they arrive, so
    more misses overlap."""


def _prefetch_codegen(rw: int, locality: int = 3):  # type: ignore[no-untyped-def]  # pragma: no cover
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(ary.data, i8p), [args[1]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [address, i32(rw), i32(locality), i32(1)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def _llvm_prefetch(typingctx, arr, byte_offset):  # type: ignore[no-untyped-def]  # pragma: no cover
    if not isinstance(arr, types.Array) or not isinstance(byte_offset, types.Integer):
        return None
    return types.void(arr, byte_offset), _prefetch_codegen(0)


@intrinsic
def _llvm_prefetch_l2(typingctx, arr, byte_offset):  # type: ignore[no-untyped-def]  # pragma: no cover
    if not isinstance(arr, types.Array) or not isinstance(byte_offset, types.Integer):
        return None
    return types.void(arr, byte_offset), _prefetch_codegen(0, 2)


@overload(prefetch, jit_options=_ACT_OPTIONS)
def _prefetch_impl(arr, byte_offset):  # type: ignore[no-untyped-def]  # pragma: no cover
    def impl(arr, byte_offset):  # type: ignore[no-untyped-def]
        _llvm_prefetch(arr, byte_offset)  # type: ignore[call-arg]

    return impl


@overload(prefetch_l2, jit_options=_ACT_OPTIONS)
def _prefetch_l2_impl(arr, byte_offset):  # type: ignore[no-untyped-def]  # pragma: no cover
    def impl(arr, byte_offset):  # type: ignore[no-untyped-def]
        _llvm_prefetch_l2(arr, byte_offset)  # type: ignore[call-arg]

    return impl


def _zero(arr: np.ndarray) -> float:
    """A zero of arr's dtype (jitted: a constant; a literal 0.0 would be float64)."""
    return arr.dtype.type(0)  # type: ignore[no-any-return]


@overload(_zero)
def _zero_impl(arr):  # type: ignore[no-untyped-def]  # pragma: no cover
    dtype = arr.dtype

    def impl(arr):  # type: ignore[no-untyped-def]
        return dtype(0)

    return impl


# Reassociation, for this reduction only: LLVM then sums in vector lanes and adds the lanes
# at the end (4.6x faster at K = 32 than the strict left-to-right sum). The order is fixed
# by the compiled code, so results are reproducible; float64 differs from a strict sum by
# rounding only (~1e-16).
_DOT_FASTMATH = {*LSTM_FASTMATH, "reassoc"}


@njit(cache=True, nogil=True, fastmath=_DOT_FASTMATH, error_model="numpy")
def _dot_rows(a, v, bias, x, y, d):  # type: ignore[no-untyped-def]  # pragma: no cover
    """y[n, d] = a[n] . v + bias (+ x[n, d] when x has rows: a residual head) for every
    row of a (N, K); v (K,) contiguous. The head's bias and residual are added here, in the
    order _head_rows adds them for D_out > 1, instead of in another pass over y (which cost
    as much as the products)."""
    N, K = a.shape
    residual = x.shape[0] > 0
    for n in range(N):
        row = a[n]
        acc = _zero(y)
        for k in range(K):
            acc += row[k] * v[k]
        acc += bias
        if residual:
            acc += x[n, d]
        y[n, d] = acc


@njit(**_KERNEL)
def _head_rows(h_top, x_in, theta, shape: ModelShape, q_out, y_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """_head_forward for the streaming step: ŷ = head(h_top) (+ x_in[:, :D_out] when
    residual), with one-output products as row dot products and the rest through _matmul
    (np.dot's call overhead is most of a product this small)."""
    V1, a1, V2, a2 = head_views(theta, shape)
    N, D = y_out.shape
    top = h_top
    if shape.head_hidden > 0:
        _matmul(h_top, V1, q_out)
        K = q_out.shape[1]
        for n in range(N):
            for k in range(K):
                v = q_out[n, k] + a1[k]
                if shape.head_activation == ACTIVATION_RELU:
                    q_out[n, k] = v if v > 0.0 else 0.0
                else:
                    q_out[n, k] = tanh(v)
        top = q_out
    if D == 1:
        _dot_rows(
            top, V2.reshape(V2.shape[0]), a2[0], x_in if shape.residual else x_in[:0], y_out, 0
        )
        return
    _matmul(top, V2, y_out)
    for n in range(N):
        for d in range(D):
            y_out[n, d] += a2[d]
            if shape.residual:
                y_out[n, d] += x_in[n, d]


@njit(**_KERNEL)
def step_gathered(x, prev, new, theta, shape: ModelShape, gates, tmp, q, y_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One LSTM step for the S = len(x) streams whose state was gathered into scratch.

    Shapes: x (S, D_in); prev, new (layers, 2, S_max, H) with S <= S_max: prev[l, 0, n] and
    prev[l, 1, n] are stream n's h and c of layer l, and the new state goes to ``new`` the
    same way; gates, tmp (>= S, 4H) and q (>= S, head_hidden) scratch; y_out (S, D_out).
    """
    S = x.shape[0]
    x_l = x
    for l in range(shape.layers):
        W, U, b = layer_views(theta, shape, l)
        pre = gates[:S]
        _matmul(prev[l, 0, :S], U, pre)
        if W.shape[0] <= _FOLD_INPUT_MAX:
            _add_bias_input(pre, b, x_l, W)
        else:
            xw = tmp[:S]
            _matmul(x_l, W, xw)
            _add_bias_projection(pre, b, xw)
        _cell_update(pre, prev[l, 1, :S], new[l, 1, :S], new[l, 0, :S])
        x_l = new[l, 0, :S]
    _head_rows(x_l, x, theta, shape, q[:S], y_out)


@njit(**_KERNEL)
def step_scratch(S: int, shape: ModelShape, like):  # type: ignore[no-untyped-def]  # pragma: no cover
    """(gates, tmp, q, h_out) for :func:`lstm_step_rows` on up to S streams."""
    H, K = shape.hidden, shape.head_hidden
    dtype = like.dtype
    return (
        np.empty((S, 4 * H), dtype),
        np.empty((S, 4 * H), dtype),
        np.empty((S, K), dtype),
        np.empty((S, H), dtype),
    )


@njit(**_KERNEL)
def _matmul_rows(table, rows, col, b, c):  # type: ignore[no-untyped-def]  # pragma: no cover
    """c[i] = table[rows[i], col : col + K] @ b: _matmul on rows of a table picked by
    index, so that the step reads each stream's h where it lies instead of copying it out
    first. table (N, ...), b (K, N_out) and c (M, N_out) C-contiguous; rows (M,)."""
    M = rows.shape[0]
    K = b.shape[0]
    N = b.shape[1]
    acc = _tile_buffer(_TILE, c)
    a_k = _tile_buffer(_TILE_ROWS, c)
    M_full = M - M % _TILE_ROWS
    N_full = N - N % _TILE_COLS
    for i0 in range(0, M_full, _TILE_ROWS):
        r0 = table[rows[i0], col : col + K]
        r1 = table[rows[i0 + 1], col : col + K]
        r2 = table[rows[i0 + 2], col : col + K]
        r3 = table[rows[i0 + 3], col : col + K]
        for j0 in range(0, N_full, _TILE_COLS):
            for q in range(_TILE):
                acc[q] = 0.0
            for k in range(K):
                b_k = b[k, j0 : j0 + _TILE_COLS]
                a_k[0] = r0[k]
                a_k[1] = r1[k]
                a_k[2] = r2[k]
                a_k[3] = r3[k]
                for jj in range(_TILE_COLS):
                    for r in range(_TILE_ROWS):
                        acc[r * _TILE_COLS + jj] += a_k[r] * b_k[jj]
            for r in range(_TILE_ROWS):
                c_r = c[i0 + r, j0 : j0 + _TILE_COLS]
                for jj in range(_TILE_COLS):
                    c_r[jj] = acc[r * _TILE_COLS + jj]
    # Edges, as in _matmul (k outermost; views from column 0).
    if N_full < N:
        for i in range(M_full):
            c[i, N_full:] = 0.0
        for k in range(K):
            b_k = b[k, N_full:]
            for i in range(M_full):
                a_ik = table[rows[i], col + k]
                c_i = c[i, N_full:]
                for j in range(N - N_full):
                    c_i[j] += a_ik * b_k[j]
    if M_full < M:
        c[M_full:] = 0.0
        for k in range(K):
            b_k = b[k]
            for i in range(M_full, M):
                a_ik = table[rows[i], col + k]
                c_i = c[i]
                for j in range(N):
                    c_i[j] += a_ik * b_k[j]


@njit(**_KERNEL)
def _gates_rows(table, rows, col, U, x, W, bias, c):  # type: ignore[no-untyped-def]  # pragma: no cover
    """c[i] = bias + x[i] @ W + h_i @ U with h_i = table[rows[i], col : col + H]: the
    pre-activations of a layer with a narrow input (x (M, D), D <= _FOLD_INPUT_MAX), in
    _matmul's register tiles, which start from bias + x W instead of zero (a separate pass
    over c cost a fifth as much as the product). table (N, ...) C-contiguous rows (so each
    h_i is a unit-stride view: strided views spilled the row addresses to the stack);
    U (H, 4H), W (D, 4H), c (M, 4H) C-contiguous."""
    M = rows.shape[0]
    K = U.shape[0]
    N = U.shape[1]
    D = x.shape[1]
    acc = _tile_buffer(_TILE, c)
    a_k = _tile_buffer(_TILE_ROWS, c)
    M_full = M - M % _TILE_ROWS
    N_full = N - N % _TILE_COLS
    for i0 in range(0, M_full, _TILE_ROWS):
        r0 = table[rows[i0], col : col + K]
        r1 = table[rows[i0 + 1], col : col + K]
        r2 = table[rows[i0 + 2], col : col + K]
        r3 = table[rows[i0 + 3], col : col + K]
        for j0 in range(0, N_full, _TILE_COLS):
            b_j = bias[j0 : j0 + _TILE_COLS]
            for r in range(_TILE_ROWS):
                for jj in range(_TILE_COLS):
                    acc[r * _TILE_COLS + jj] = b_j[jj]
            for d in range(D):
                w_d = W[d, j0 : j0 + _TILE_COLS]
                for r in range(_TILE_ROWS):
                    a_k[r] = x[i0 + r, d]
                for jj in range(_TILE_COLS):
                    for r in range(_TILE_ROWS):
                        acc[r * _TILE_COLS + jj] += a_k[r] * w_d[jj]
            for k in range(K):
                u_k = U[k, j0 : j0 + _TILE_COLS]
                a_k[0] = r0[k]
                a_k[1] = r1[k]
                a_k[2] = r2[k]
                a_k[3] = r3[k]
                for jj in range(_TILE_COLS):
                    for r in range(_TILE_ROWS):
                        acc[r * _TILE_COLS + jj] += a_k[r] * u_k[jj]
            for r in range(_TILE_ROWS):
                c_r = c[i0 + r, j0 : j0 + _TILE_COLS]
                for jj in range(_TILE_COLS):
                    c_r[jj] = acc[r * _TILE_COLS + jj]
    # Edges: the columns right of the tiles (none when 4H is a multiple of 32), then the
    # rows below them (a chunk of M % 4 rows). Sums in the tiles' order (bias, x W, then h U
    # over k), with the columns innermost so the loops vectorise; a sum per column (k
    # innermost, strided through U) ran ~100x slower and cost 10% of a batch on its 1-3
    # leftover rows.
    for i in range(M):
        j_start = N_full if i < M_full else 0
        if j_start == N:
            continue
        c_i = c[i, j_start:]
        b_i = bias[j_start:]
        for j in range(N - j_start):
            c_i[j] = b_i[j]
        for d in range(D):
            x_id = x[i, d]
            w_d = W[d, j_start:]
            for j in range(N - j_start):
                c_i[j] += x_id * w_d[j]
        h_i = table[rows[i], col : col + K]
        for k in range(K):
            h_ik = h_i[k]
            u_k = U[k, j_start:]
            for j in range(N - j_start):
                c_i[j] += h_ik * u_k[j]


# Units per block of _cell_block_rows: a constant trip count, so that each of its loops is
# a fixed number of full vectors, and its intermediate values sit in stack buffers.
_CELL_UNITS = 32


@njit(**_KERNEL)
def _cell_block_rows(gates, hc, rows, l, h_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """_cell_update_rows for H a multiple of _CELL_UNITS: the same arithmetic in one pass
    per row and block of _CELL_UNITS units. A loop whose only stores go to a stack buffer
    needs no overlap checks, and a loop that stores to one array from such a buffer none
    either; with H at run time, _cell_update_rows's loops check overlaps and handle
    remainders per row, 32 units at a time, which cost more than the arithmetic (5.8
    against 8.3 µs per 256 rows at H = 32). c_t is read back from cb, not from the table:
    the same float32 value."""
    S = rows.shape[0]
    H = h_out.shape[1]
    one = np.ones(1, gates.dtype)[0]
    two = one + one
    cb = _tile_buffer(_CELL_UNITS, gates)  # c_t
    ob = _tile_buffer(_CELL_UNITS, gates)  # e_o
    hb = _tile_buffer(_CELL_UNITS, gates)  # h_t
    for n in range(S):
        state = hc[rows[n], l]
        for j0 in range(0, H, _CELL_UNITS):
            j1 = j0 + _CELL_UNITS
            a_i = gates[n, j0:j1]
            a_f = gates[n, H + j0 : H + j1]
            a_g = gates[n, 2 * H + j0 : 2 * H + j1]
            a_o = gates[n, 3 * H + j0 : 3 * H + j1]
            h_row = state[0, j0:j1]
            c_row = state[1, j0:j1]
            out = h_out[n, j0:j1]
            for j in range(_CELL_UNITS):
                e_i = neg_exp(a_i[j])
                e_f = neg_exp(a_f[j])
                e_g = neg_exp(two * a_g[j])
                ob[j] = neg_exp(a_o[j])
                p_ig = (one + e_i) * (one + e_g)
                p_f = one + e_f
                cb[j] = (c_row[j] * p_ig + (one - e_g) * p_f) / (p_f * p_ig)
            for j in range(_CELL_UNITS):
                e_c = neg_exp(two * cb[j])
                hb[j] = (one - e_c) / ((one + ob[j]) * (one + e_c))
            for j in range(_CELL_UNITS):
                c_row[j] = cb[j]
            for j in range(_CELL_UNITS):
                h_row[j] = hb[j]
            for j in range(_CELL_UNITS):
                out[j] = hb[j]


@njit(**_KERNEL)
def _cell_update_rows(gates, hc, rows, l, h_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """c_t and h_t of layer l for table rows, in place: from the pre-activations ``gates``
    (S, 4H; overwritten), c_{t-1} read from and c_t, h_t written to hc[rows[n], l]; h_t
    also into h_out (S, H), the next layer's (or the head's) input.

    With E(x) = exp(-x) (neg_exp), σ(a) = 1 / (1 + E(a)) and tanh(b) = (1 - E(2b)) / (1 + E(2b)),
    and e_i = E(i), e_f = E(f), e_g = E(2g), e_o = E(o), p = (1 + e_i)(1 + e_g):
        c_t = f_t c_{t-1} + i_t g_t = (c_{t-1} p + (1 - e_g)(1 + e_f)) / ((1 + e_f) p)
        h_t = o_t tanh(c_t) = (1 - E(2c_t)) / ((1 + e_o)(1 + E(2c_t)))
    Two divisions per unit (the divider limits these passes). Three passes, each over few
    arrays (as in _cell_update): the four E per unit, in place, one gate block at a time (a
    loop per block, with one array, has no overlap to check, and its iterations are
    independent: a fused pass per unit ran one long dependency chain per row); then c_t;
    then h_t. (For H a multiple of _CELL_UNITS, _cell_block_rows: the same in one pass.)
    """
    S = rows.shape[0]
    H = h_out.shape[1]
    if H % _CELL_UNITS == 0:
        _cell_block_rows(gates, hc, rows, l, h_out)
        return
    one = np.ones(1, gates.dtype)[0]
    two = one + one
    for n in range(S):
        # Views from index 0 per gate block (see _cell_update).
        a = gates[n, : 2 * H]  # i and f
        for j in range(2 * H):
            a[j] = neg_exp(a[j])
        a = gates[n, 2 * H : 3 * H]  # g: tanh needs E(2g)
        for j in range(H):
            a[j] = neg_exp(two * a[j])
        a = gates[n, 3 * H :]  # o
        for j in range(H):
            a[j] = neg_exp(a[j])
    for n in range(S):
        g = gates[n]
        e_i = g[:H]
        e_f = g[H : 2 * H]
        e_g = g[2 * H : 3 * H]
        c_row = hc[rows[n], l, 1]
        for j in range(H):
            p_ig = (one + e_i[j]) * (one + e_g[j])
            p_f = one + e_f[j]
            c_row[j] = (c_row[j] * p_ig + (one - e_g[j]) * p_f) / (p_f * p_ig)
    for n in range(S):
        e_o = gates[n, 3 * H :]
        state = hc[rows[n], l]
        h_row = state[0]
        c_row = state[1]
        out = h_out[n]
        for j in range(H):
            e_c = neg_exp(two * c_row[j])
            h_t = (one - e_c) / ((one + e_o[j]) * (one + e_c))
            h_row[j] = h_t
            out[j] = h_t


@njit(**_KERNEL)
def lstm_step_rows(x, rows, hc, theta, shape: ModelShape, gates, tmp, q, h_out, y_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One step for S streams whose h and c are rows of one table, in place, reading and
    writing each row where it lies (no gather into scratch and scatter back).

    Shapes: x (S, D_in); rows (S,) distinct row indices; hc (capacity, layers, 2, H) with
    hc[s, l, 0] = h and hc[s, l, 1] = c of row s; scratch gates, tmp (>= S, 4H), q (>= S,
    head_hidden), h_out (>= S, H); y_out (S, D_out) receives ŷ.
    Layer l's product reads its old h from the rows before its cell update overwrites them;
    the layer above reads the new h from h_out.
    """
    S = x.shape[0]
    H = shape.hidden
    flat = hc.reshape((hc.shape[0], shape.layers * 2 * H))  # row s: h_0, c_0, h_1, c_1, ...
    x_l = x
    for l in range(shape.layers):
        W, U, b = layer_views(theta, shape, l)
        pre = gates[:S]
        if W.shape[0] <= _FOLD_INPUT_MAX:
            _gates_rows(flat, rows, 2 * H * l, U, x_l, W, b, pre)
        else:
            _matmul_rows(flat, rows, 2 * H * l, U, pre)
            xw = tmp[:S]
            _matmul(x_l, W, xw)
            _add_bias_projection(pre, b, xw)
        _cell_update_rows(pre, hc, rows, l, h_out[:S])
        x_l = h_out[:S]
    _head_rows(x_l, x, theta, shape, q[:S], y_out)


@njit(**_KERNEL)
def lstm_step(x, slots, h, c, theta, shape: ModelShape, y_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One step for S streams, reading and writing their rows of the state tables in place.

    Shapes: x (S, D_in), slots (S,) distinct row indices, h and c (capacity, layers, H),
    y_out (S, D_out) receives ŷ (the prediction of each stream's next input).
    Scratch is allocated once per call (per batch), never per stream. (The scoring kernel
    keeps its table's h and c in one array and steps it with lstm_step_rows.)
    """
    S = x.shape[0]
    L, H = shape.layers, shape.hidden
    prev = np.empty((L, 2, S, H), theta.dtype)
    new = np.empty((L, 2, S, H), theta.dtype)
    gates, tmp, q, _ = step_scratch(S, shape, theta)
    for n in range(S):
        s = slots[n]
        for l in range(L):
            prev[l, 0, n] = h[s, l]
            prev[l, 1, n] = c[s, l]
    step_gathered(x, prev, new, theta, shape, gates, tmp, q, y_out)
    for n in range(S):
        s = slots[n]
        for l in range(L):
            h[s, l] = new[l, 0, n]
            c[s, l] = new[l, 1, n]


# --------------------------------------------------------------------------- sequence forward


# Layers with at most this many inputs add x_t W_l inside the step loop, by plain loops;
# wider ones get the input projection of all T steps from one matrix product first. For
# the usual one-feature input the product is (T*B, 1) @ (1, 4H): the BLAS call writes ~3 MB
# of pre-activations that the step loop must then read back, which costs more than adding
# x_t W on the fly (0.09 ms, plus 0.06 ms for a separate bias pass, vs 0.05 ms at H=32,
# T=100, B=64).
_FOLD_INPUT_MAX = 4


@njit(**_KERNEL)
def _add_bias_input(pre, b, x_t, W):  # type: ignore[no-untyped-def]  # pragma: no cover
    """pre += b + x_t @ W by loops, for a narrow input: pre (B, 4H), x_t (B, D), W (D, 4H)."""
    B, G = pre.shape
    D = x_t.shape[1]
    w = W[0]
    for n in range(B):
        row = pre[n]
        x_nd = x_t[n, 0]  # the bias and the first input in one pass (often the only input)
        for j in range(G):
            row[j] += b[j] + x_nd * w[j]
        for d in range(1, D):
            x_nd = x_t[n, d]
            w_d = W[d]
            for j in range(G):
                row[j] += x_nd * w_d[j]


@njit(**_KERNEL)
def _add_bias_projection(pre, b, xw):  # type: ignore[no-untyped-def]  # pragma: no cover
    """pre += b + xw, where xw (B, 4H) is the step's slice of the precomputed x @ W."""
    B, G = pre.shape
    for n in range(B):
        for j in range(G):
            pre[n, j] += xw[n, j] + b[j]


@njit(**_KERNEL)
def _cell_forward(pre, gates, c_prev, c_out, h_out, tanh_c_out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """_cell_update from pre-activations ``pre`` (B, 4H) into a separate ``gates`` array,
    also keeping tanh(c_t) (B, H) for the backward pass.

    pre must not be gates: LLVM checks once, for all rows together, that the arrays of a
    loop do not overlap, and runs the loop scalar when they do.
    """
    B = pre.shape[0]
    H = c_prev.shape[1]
    for n in range(B):
        # Gate blocks through views that start at index 0, as in _cell_update.
        a_in = pre[n, : 2 * H]
        a_out = gates[n, : 2 * H]
        for j in range(2 * H):  # i and f
            a_out[j] = sigmoid(a_in[j])
        a_in = pre[n, 2 * H : 3 * H]
        a_out = gates[n, 2 * H : 3 * H]
        for j in range(H):  # g
            a_out[j] = tanh(a_in[j])
        a_in = pre[n, 3 * H :]
        a_out = gates[n, 3 * H :]
        for j in range(H):  # o
            a_out[j] = sigmoid(a_in[j])
    for n in range(B):
        row = gates[n]
        for j in range(H):
            c_t = row[H + j] * c_prev[n, j] + row[j] * row[2 * H + j]
            c_out[n, j] = c_t
            tc = tanh(c_t)
            tanh_c_out[n, j] = tc
            h_out[n, j] = row[3 * H + j] * tc


@njit(**_KERNEL)
def lstm_forward(x, h0, c0, theta, shape: ModelShape, hs, cs, gates, q, y):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Forward over a time-major batch of sequences, keeping what BPTT needs.

    Shapes: x (T, B, D_in); h0, c0 (layers, B, H); outputs, all overwritten:
    hs, cs (layers, T+1, B, H) with hs[:, 0] = h0 and hs[:, t+1] = h_t;
    gates (layers, T, B, 4H) activated i, f, g, o; q (T, B, K) the head's hidden activations;
    y (T, B, D_out) the predictions.
    Allocates the tanh(c_t) that lstm_forward_train keeps; training calls that one instead.
    """
    T, B, _ = x.shape
    tanh_cs = np.empty((shape.layers, T, B, shape.hidden), theta.dtype)
    lstm_forward_train(x, h0, c0, theta, shape, hs, cs, tanh_cs, gates, q, y)


@njit(**_KERNEL)
def lstm_forward_train(x, h0, c0, theta, shape: ModelShape, hs, cs, tanh_cs, gates, q, y):  # type: ignore[no-untyped-def]  # pragma: no cover
    """lstm_forward, also writing tanh(c_t) into tanh_cs (layers, T, B, H) for
    lstm_backward_train, which then need not compute it again."""
    T, B, D_in = x.shape
    H = shape.hidden
    G = 4 * H
    pre = np.empty((B, G), theta.dtype)
    for l in range(shape.layers):
        W, U, b = layer_views(theta, shape, l)
        hs[l, 0] = h0[l]
        cs[l, 0] = c0[l]
        fold_input = W.shape[0] <= _FOLD_INPUT_MAX
        if not fold_input:
            # The input projection of all T steps is one product: (T*B, D_l) @ (D_l, 4H).
            x_l = hs[l - 1].reshape(((T + 1) * B, H))[B:] if l > 0 else x.reshape((T * B, D_in))
            np.dot(x_l, W, gates[l].reshape((T * B, G)))
        for t in range(T):
            _matmul(hs[l, t], U, pre)
            if fold_input:
                _add_bias_input(pre, b, x[t] if l == 0 else hs[l - 1, t + 1], W)
            else:
                _add_bias_projection(pre, b, gates[l, t])
            _cell_forward(pre, gates[l, t], cs[l, t], cs[l, t + 1], hs[l, t + 1], tanh_cs[l, t])
    h_top = hs[shape.layers - 1].reshape(((T + 1) * B, H))[B:]
    _head_forward(
        h_top,
        x.reshape((T * B, D_in)),
        theta,
        shape,
        q.reshape((T * B, shape.head_hidden)),
        y.reshape((T * B, shape.n_outputs)),
    )


@njit(**_KERNEL)
def mse_loss_grad(y, target, washout, dy):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Mean squared error over steps t >= washout; writes dL/dŷ into dy (T, B, D_out)."""
    T, B, D = y.shape
    count = (T - washout) * B * D
    scale = 1.0 / count
    loss = 0.0
    for t in range(T):
        for n in range(B):
            for d in range(D):
                if t < washout:
                    dy[t, n, d] = 0.0
                else:
                    e = y[t, n, d] - target[t, n, d]
                    loss += e * e
                    dy[t, n, d] = 2.0 * e * scale
    return loss * scale


# --------------------------------------------------------------------------- BPTT


@njit(**_KERNEL)
def _column_sums(a, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """out[m] = sum over n of a[n, m]; a (N, M), out (M,).

    Four rows per pass: one row per pass makes every sum a chain of N dependent adds through
    memory, and the pass waits on that chain (0.11 vs 0.08 ms for dG at T*B=6400, 4H=128).
    """
    N, M = a.shape
    for m in range(M):
        out[m] = 0.0
    N4 = N - N % 4
    for n in range(0, N4, 4):
        r0, r1, r2, r3 = a[n], a[n + 1], a[n + 2], a[n + 3]
        for m in range(M):
            out[m] += (r0[m] + r1[m]) + (r2[m] + r3[m])
    for n in range(N4, N):
        for m in range(M):
            out[m] += a[n, m]


@njit(**_KERNEL)
def _scatter_gates(d_i, d_f, d_g, d_o, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """out[n] = [d_i[n], d_f[n], d_g[n], d_o[n]] for each row n; out (B, 4H), the rest (B, H).

    One copy loop per block, each through a view that starts at index 0 (see _cell_update).
    (Summing db here as well, while the rows are in cache, was no faster than a separate
    pass: every row adds into the same 4H sums, one long chain of dependent adds.)
    """
    B, H = d_i.shape
    for n in range(B):
        r = out[n, :H]
        for j in range(H):
            r[j] = d_i[n, j]
        r = out[n, H : 2 * H]
        for j in range(H):
            r[j] = d_f[n, j]
        r = out[n, 2 * H : 3 * H]
        for j in range(H):
            r[j] = d_g[n, j]
        r = out[n, 3 * H :]
        for j in range(H):
            r[j] = d_o[n, j]


@njit(**_KERNEL)
def lstm_backward(x, dy, theta, shape: ModelShape, hs, cs, gates, q, grad, dG, dh_out, dq):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Backpropagation through the T steps of one ``lstm_forward``; writes dL/dθ into grad.

    dy (T, B, D_out) is dL/dŷ; hs, cs, gates, q are the forward's outputs. The initial
    state is treated as a constant (truncation at the window start). Scratch, overwritten:
    dG (T, B, 4H), dh_out (T*B, H), dq (T*B, K). The caller keeps them across batches:
    fresh multi-megabyte arrays per call cost more in page faults than the arithmetic.
    Computes and allocates tanh(c_t); training keeps it from lstm_forward_train and calls
    lstm_backward_train instead.
    """
    L, T, B, _ = gates.shape
    H = shape.hidden
    tanh_cs = np.empty((L, T, B, H), theta.dtype)
    for l in range(L):
        for t in range(T):
            for n in range(B):
                for j in range(H):
                    tanh_cs[l, t, n, j] = tanh(cs[l, t + 1, n, j])
    lstm_backward_train(x, dy, theta, shape, hs, cs, tanh_cs, gates, q, grad, dG, dh_out, dq)


@njit(**_KERNEL)
def lstm_backward_train(
    x, dy, theta, shape: ModelShape, hs, cs, tanh_cs, gates, q, grad, dG, dh_out, dq
):  # type: ignore[no-untyped-def]  # pragma: no cover
    """lstm_backward with tanh(c_t) (layers, T, B, H) as kept by lstm_forward_train."""
    T, B, D_in = x.shape
    H = shape.hidden
    G = 4 * H
    K = shape.head_hidden
    dtype = theta.dtype
    one = np.ones(1, dtype)[0]  # a literal 1.0 would promote float32 arithmetic to float64
    grad[:] = 0.0
    dy2 = dy.reshape((T * B, shape.n_outputs))

    # Head.
    V1, _a1, V2, _a2 = head_views(theta, shape)
    dV1, da1, dV2, da2 = head_views(grad, shape)
    h_top = hs[shape.layers - 1].reshape(((T + 1) * B, H))[B:]
    _column_sums(dy2, da2)
    if K > 0:
        q2 = q.reshape((T * B, K))
        np.dot(q2.T, dy2, dV2)
        np.dot(dy2, V2.T, dq)
        for n in range(T * B):
            for k in range(K):
                if shape.head_activation == ACTIVATION_RELU:
                    if q2[n, k] <= 0.0:
                        dq[n, k] = 0.0
                else:
                    dq[n, k] *= one - q2[n, k] * q2[n, k]
        np.dot(h_top.T, dq, dV1)
        _column_sums(dq, da1)
        np.dot(dq, V1.T, dh_out)
    else:
        np.dot(h_top.T, dy2, dV2)
        np.dot(dy2, V2.T, dh_out)

    # Layers, top to bottom; dh_out holds dL/dh_t of the layer being processed, from above.
    dh_next = np.empty((B, H), dtype)
    dc_next = np.empty((B, H), dtype)
    # The four gate gradients of one step go to separate arrays first, then into dG[t].
    # Written straight into dG[t, n, k*H + j], four stores into one array at a distance H
    # that LLVM cannot bound need runtime overlap checks; LLVM hoists those out of the row
    # loop, where the ranges of all rows do overlap, so the loop always ran scalar (~4x
    # slower than this loop plus the four copies).
    d_i = np.empty((B, H), dtype)
    d_f = np.empty((B, H), dtype)
    d_g = np.empty((B, H), dtype)
    d_o = np.empty((B, H), dtype)
    dU_T = np.empty((G, H), dtype)
    for l in range(shape.layers - 1, -1, -1):
        W, U, _b = layer_views(theta, shape, l)
        dW, dU, db = layer_views(grad, shape, l)
        U_T = np.ascontiguousarray(U.T)  # _matmul wants b C-contiguous
        dh_next[:] = 0.0
        dc_next[:] = 0.0
        dh_out3 = dh_out.reshape((T, B, H))
        for t in range(T - 1, -1, -1):
            gate = gates[l, t]
            c_prev = cs[l, t]
            tanh_c = tanh_cs[l, t]
            dh_above = dh_out3[t]
            for n in range(B):
                for j in range(H):
                    i_t = gate[n, j]
                    f_t = gate[n, H + j]
                    g_t = gate[n, 2 * H + j]
                    o_t = gate[n, 3 * H + j]
                    tc = tanh_c[n, j]
                    dh = dh_above[n, j] + dh_next[n, j]  # from the layer above and from t+1
                    dc = dc_next[n, j] + dh * o_t * (one - tc * tc)
                    d_i[n, j] = dc * g_t * i_t * (one - i_t)
                    d_f[n, j] = dc * c_prev[n, j] * f_t * (one - f_t)
                    d_g[n, j] = dc * i_t * (one - g_t * g_t)
                    d_o[n, j] = dh * tc * o_t * (one - o_t)
                    dc_next[n, j] = dc * f_t
            _scatter_gates(d_i, d_f, d_g, d_o, dG[t])
            if t > 0:  # dL/dh_{-1} is not needed: the initial state is a constant
                _matmul(dG[t], U_T, dh_next)
        dG2 = dG.reshape((T * B, G))
        h_prev_all = hs[l].reshape(((T + 1) * B, H))[: T * B]
        # dU = h_prev_all.T @ dG2, computed transposed: then _matmul's tiles run along the
        # 4H rows of dG2.T (0.34 vs 0.61 ms at H=32, T*B=6400); the copy is 4H*H.
        _matmul(dG2.T, h_prev_all, dU_T)
        for a in range(H):
            for k in range(G):
                dU[a, k] = dU_T[k, a]
        _column_sums(dG2, db)
        x_l = x.reshape((T * B, D_in)) if l == 0 else hs[l - 1].reshape(((T + 1) * B, H))[B:]
        np.dot(x_l.T, dG2, dW)
        if l > 0:
            np.dot(dG2, W.T, dh_out)  # becomes dL/dh_t of layer l-1
