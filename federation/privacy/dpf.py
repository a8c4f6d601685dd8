"""Distributed point functions (Boyle, Gilboa, Ishai: "Function Secret Sharing: Improvements and
Extensions", CCS 2016, Fig. 1), vectorized over many keys, with outputs in (Z_2^32)^D.

A point function f_{alpha,beta}(x) = beta if x == alpha else 0 over the domain [0, N) is split into two
keys k_0, k_1; Eval(k_0, x) + Eval(k_1, x) = f(x) (mod 2^32, coordinatewise) and either key alone is
pseudorandom: it hides alpha and beta. A client sends k_0 to aggregator A and k_1 to aggregator B for each
item row it updates; each aggregator evaluates its keys over the whole catalogue (``eval_full_sum``) and
only the sum of the two aggregators' results is the real sum of the rows.

Primitives: the length-doubling PRG G and the output conversion are fixed-key AES-128 in
Matyas-Meyer-Oseas mode, G_k(s) = AES_k(s) xor s (the construction of the reference DPF libraries), with
AES from ``cryptography``; keys' root seeds come from ``os.urandom``. No home-made cipher.

Key layout (bytes, one party): root seed (16) | per level i < n: seed correction (16), t corrections
(1 byte: bit 0 left, bit 1 right) | output correction (4 D, little-endian uint32). n = ceil(log2 N).
"""
from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED = 16
_MASK32 = np.uint64(0xFFFFFFFF)
# Public fixed AES keys of the PRG (any fixed values; they are not secrets): left child, right child, output.
_FIXED_KEYS = (bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)))


def depth(n: int) -> int:
    """Tree depth for a domain of n points: ceil(log2 n), at least 1."""
    return max(1, int(n - 1).bit_length())


def key_bytes(n: int, d: int) -> int:
    """Size of one party's key for domain n and output width d (uint32 coordinates)."""
    return SEED + depth(n) * (SEED + 1) + 4 * d


class _PRG:
    """Fixed-key AES-MMO over batches of 16-byte blocks (M, 16) uint8."""

    def __init__(self):
        self._enc = [Cipher(algorithms.AES(k), modes.ECB()).encryptor() for k in _FIXED_KEYS]

    def mmo(self, which: int, blocks: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(blocks, dtype=np.uint8)
        buf = np.empty(b.size + SEED - 1, np.uint8)                      # update_into needs a block of slack
        n = self._enc[which].update_into(memoryview(b.reshape(-1)), memoryview(buf))
        out = buf[:n].reshape(b.shape)
        out ^= b
        return out

    def expand(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """G(s) for seeds (M, 16): (sL (M, 16), tL (M,), sR, tR); the t bits are the seeds' low bits."""
        left, right = self.mmo(0, s), self.mmo(1, s)
        tl, tr = left[:, 0] & 1, right[:, 0] & 1
        left[:, 0] &= 0xFE
        right[:, 0] &= 0xFE
        return left, tl, right, tr

    def convert(self, s: np.ndarray, d: int) -> np.ndarray:
        """Seeds (M, 16) -> pseudorandom (M, d) uint32: MMO of (seed xor counter j) for j < ceil(d / 4)."""
        m, j = len(s), -(-d // 4)
        blocks = np.repeat(s[:, None, :], j, axis=1)                     # (M, J, 16)
        blocks[:, :, 12:] ^= np.arange(j, dtype="<u4").view(np.uint8).reshape(j, 4)[None]
        out = self.mmo(2, blocks.reshape(-1, SEED)).reshape(m, j * SEED)
        return out.view("<u4")[:, :d].astype(np.uint32)


def gen(alphas: np.ndarray, betas: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys of K point functions: alphas (K,) in [0, n), betas (K, D) uint32.
    Returns (keys of party 0, keys of party 1), each (K, key_bytes(n, D)) uint8."""
    alphas = np.asarray(alphas, dtype=np.int64)
    betas = np.asarray(betas, dtype=np.uint32)
    K, D = betas.shape
    if len(alphas) != K or (K and (alphas.min() < 0 or alphas.max() >= n)):
        raise ValueError("alphas must be K points in [0, n)")
    L = depth(n)
    g = _PRG()
    root = np.frombuffer(os.urandom(2 * K * SEED), dtype=np.uint8).reshape(2, K, SEED).copy()
    root[:, :, 0] &= 0xFE
    s0, s1 = root[0].copy(), root[1].copy()
    t0, t1 = np.zeros(K, np.uint8), np.ones(K, np.uint8)
    cw_s = np.empty((K, L, SEED), np.uint8)
    cw_t = np.empty((K, L), np.uint8)
    for i in range(L):
        bit = ((alphas >> (L - 1 - i)) & 1).astype(np.uint8)            # (K,) the path's next bit, MSB first
        sL0, tL0, sR0, tR0 = g.expand(s0)
        sL1, tL1, sR1, tR1 = g.expand(s1)
        go_right = bit.astype(bool)[:, None]
        s_cw = np.where(go_right, sL0 ^ sL1, sR0 ^ sR1)                  # the "lose" side's seeds must agree
        tl_cw = tL0 ^ tL1 ^ bit ^ 1
        tr_cw = tR0 ^ tR1 ^ bit
        cw_s[:, i], cw_t[:, i] = s_cw, tl_cw | (tr_cw << 1)
        keep_cw = np.where(bit == 1, tr_cw, tl_cw)
        s0 = np.where(go_right, sR0, sL0) ^ (t0[:, None] * s_cw)
        s1 = np.where(go_right, sR1, sL1) ^ (t1[:, None] * s_cw)
        t0 = np.where(bit == 1, tR0, tL0) ^ (t0 & keep_cw)
        t1 = np.where(bit == 1, tR1, tL1) ^ (t1 & keep_cw)
    c0, c1 = g.convert(s0, D), g.convert(s1, D)                          # (K, D) uint32
    cw_out = (betas.astype(np.uint64) - c0 + c1) & _MASK32              # beta - C(s0) + C(s1)
    cw_out = np.where(t1[:, None] == 1, (np.uint64(1 << 32) - cw_out) & _MASK32, cw_out).astype("<u4")
    tail = np.concatenate([cw_s, cw_t[:, :, None]], 2).reshape(K, -1)   # (K, L * 17)
    k0 = np.concatenate([root[0], tail, cw_out.view(np.uint8).reshape(K, -1)], 1)
    k1 = np.concatenate([root[1], tail, cw_out.view(np.uint8).reshape(K, -1)], 1)
    return k0, k1


def split_keys(keys: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(K, key_bytes) -> root seeds (K, 16), seed corrections (K, L, 16), t corrections (K, L), output
    corrections (K, d) uint32. Raises ValueError on a wrong key length."""
    keys = np.asarray(keys, dtype=np.uint8)
    L = depth(n)
    if keys.ndim != 2 or keys.shape[1] != key_bytes(n, d):
        raise ValueError(f"DPF keys of shape {keys.shape}, expected (K, {key_bytes(n, d)})")
    K = len(keys)
    tail = keys[:, SEED:SEED + L * (SEED + 1)].reshape(K, L, SEED + 1)
    out = np.ascontiguousarray(keys[:, SEED + L * (SEED + 1):]).view("<u4").astype(np.uint32)
    return keys[:, :SEED], tail[:, :, :SEED], tail[:, :, SEED], out


def eval_full(party: int, keys: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Expand K keys of one party over the domain: leaf seeds (K, n, 16) and leaf bits (K, n)."""
    root, cw_s, cw_t, _ = split_keys(keys, n, d)
    K, L = len(root), depth(n)
    g = _PRG()
    s = root[:, None, :].copy()                                          # (K, m, 16)
    t = np.full((K, 1), party, np.uint8)
    for i in range(L):
        m = s.shape[1]
        sL, tL, sR, tR = g.expand(s.reshape(-1, SEED))
        sL, sR = sL.reshape(K, m, SEED), sR.reshape(K, m, SEED)
        tL, tR = tL.reshape(K, m), tR.reshape(K, m)
        corr = t[:, :, None] * cw_s[:, None, i, :]                       # (K, m, 16)
        sL ^= corr
        sR ^= corr
        tL ^= t & (cw_t[:, None, i] & 1)
        tR ^= t & (cw_t[:, None, i] >> 1)
        s = np.stack([sL, sR], 2).reshape(K, 2 * m, SEED)                # children in order: 2j, 2j+1
        t = np.stack([tL, tR], 2).reshape(K, 2 * m)
        keep = -(-n // (1 << (L - 1 - i)))                               # prefixes that still lead into [0, n)
        s, t = s[:, :keep], t[:, :keep]
    return s, t


def eval_full_sum(party: int, keys: np.ndarray, n: int, d: int, chunk_bytes: int = 1 << 27) -> np.ndarray:
    """This party's share of sum_k f_k over the domain: (n, d) uint32. Memory is bounded by evaluating
    ``chunk_bytes`` worth of converted outputs at a time."""
    keys = np.asarray(keys, dtype=np.uint8)
    acc = np.zeros((n, d), np.uint64)
    if len(keys) == 0:
        return acc.astype(np.uint32)
    g = _PRG()
    per_key = max(1, n * d * 4)
    step = max(1, chunk_bytes // per_key)
    for lo in range(0, len(keys), step):
        kc = keys[lo:lo + step]
        s, t = eval_full(party, kc, n, d)                               # (Kc, n, 16), (Kc, n)
        *_, cw_out = split_keys(kc, n, d)                                # (Kc, d)
        conv = g.convert(s.reshape(-1, SEED), d).reshape(len(kc), n, d)  # (Kc, n, d)
        part = conv.sum(0, dtype=np.uint64)
        part += t.T.astype(np.uint64) @ cw_out.astype(np.uint64)        # (n, Kc) @ (Kc, d)
        acc += part & _MASK32
    acc &= _MASK32
    if party == 1:                                                       # party 1's share is negated
        acc = (np.uint64(1 << 32) - acc) & _MASK32
    return acc.astype(np.uint32)
