"""A numba exp that loops vectorize: float32 by range reduction and a polynomial (max error 1.3 ulp
against 1.05 for torch.exp, measured over [-87, 1]), float64 numpy's (libm's). numba's np.exp calls
libm once per element (no SVML in the llvmlite wheels), which made the implicit softmax's exp
~4x slower than the rest of it. ``exp`` is called from jitted code only."""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def pow2(typingctx, n):                 # 2^n for an integral float32 n in [-126, 127], as exponent bits
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return types.float32(types.float32), codegen

# contract only: reassoc could fold the two-part ln 2 below into one constant.
@nb.njit(fastmath={"contract"})
def expf(v):                            # e^v = 2^n e^r, |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial
    f = np.float32
    v = min(max(v, f(-87.0)), f(88.0))  # e^-87 ~ 1.6e-38: the smallest normal float32 is 1.2e-38
    n = np.floor(v * f(1.4426950408889634) + f(0.5))
    r = (v - n * f(0.693359375)) - n * f(-2.12194440e-4)              # ln 2 = 0.693359375 - 2.1219444e-4
    p = f(1 / 5040)
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0):
        p = p * r + f(c)
    return p * pow2(n)

def exp(v):                             # called from jitted code only: dispatched by dtype below
    return np.exp(v)

@overload(exp, inline="always")
def _exp(v):
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v: expf(v)
    return lambda v: np.exp(v)
