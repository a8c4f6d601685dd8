"""Secure aggregation of partially compressed updates with two non-colluding aggregators.

Threat model: aggregators A and B are run by parties that do not collude; each is honest-but-curious
(follows the protocol, keeps everything it sees). The server that applies the aggregate (it may be A) sees
only the two aggregators' summed shares. Clients are the users' devices.

What a client sends, per round (all in the ring Z_2^32, values fixed-point, see ``fixedpoint``):
  * to A and to B, sealed to each (``channel``), ``P`` DPF keys (``dpf``): one per item row it updates,
    carrying [row delta (H1), bias delta (1), count 1], plus P - R keys of zero at random items, where
    P is R rounded up to a power of two (at least ``pad_min``, at most the catalogue): an aggregator
    learns P, never which items or how many of them are real. P still tells roughly how active the
    client is; with ``fixed_rows`` every client sends the same P (a client with more rows sends a
    random subset of them each round, ``rows_sent``), so P says nothing;
  * its dense update (dense decoder layer, content projection) additively shared: A gets a 16-byte seed
    and expands it with AES-CTR into a mask m, B gets (update - m). Either share alone is uniformly
    random.
What each aggregator learns: who took part (the server samples clients by id) and each one's P.
What the server learns: per round, the sum over accepted clients of every row delta and of the dense
delta, and how many clients sent each row; a row sent by fewer than ``min_clients`` clients in a round
is withheld (left unchanged); a round with fewer than ``min_clients`` accepted clients is refused.
What this does not hide: sums over many rounds, intersected with who took part in each, still leak
(the attack benchmark measures it); differential privacy is what bounds that. With privacy.dp on, each
client clips its update before encoding, rows carry no count, and each aggregator adds Gaussian noise
to its share before it leaves (``aggregator_noise``), so the server never sees a noise-free sum.

Dropped clients: a client's two payloads travel in one reply; the aggregators sum only the clients both
accepted, so a client that dropped (or whose payload one aggregator rejected) is simply not in the sum
and its other share is discarded unrevealed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from federation.privacy import channel, dpf
from federation.privacy.fixedpoint import decode, from_ring, quantize, ring_add, ring_sub, to_ring

log = logging.getLogger(__name__)

SEED = 16


class RejectedShare(ValueError):
    """A payload an aggregator will not add; the text says why (logged, the client is left out)."""


class RoundRefused(RuntimeError):
    """Too few clients for the round's sums to be revealed."""


@dataclass(frozen=True)
class SecAggSettings:
    frac_bits: int = 16          # fixed-point fraction bits (resolution 2^-16)
    max_clients: int = 1024      # per-value clamp so that this many clients cannot overflow the ring
    min_clients: int = 5         # a row (and a round) is revealed only over at least this many clients
    pad_min: int = 16            # smallest padded number of rows
    fixed_rows: int = 0          # > 0: every client sends exactly this many keys (more rows: a random subset)
    seed: int = 0                # the job's seed: which rows a client over fixed_rows sends in a round
    noise_std: float = 0.0       # DP (privacy.dp): Gaussian noise std each aggregator adds to every coordinate
    noise_seed: int | None = None  # None: fresh OS randomness (production); an int only for tests

    @property
    def counts(self) -> bool:
        """Whether rows carry the count coordinate: not under DP, whose guarantee does not cover exact
        per-item counts (the DP rule divides by the expected number of clients instead)."""
        return self.noise_std == 0.0


@dataclass(frozen=True)
class Layout:
    """Sizes of one model's contribution: catalogue n, row width h1 (+ bias + count), dense length."""
    n_items: int
    h1: int
    dense: int

    @property
    def row_dim(self) -> int:
        return self.h1 + 2

    @property
    def key_bytes(self) -> int:
        return dpf.key_bytes(self.n_items, self.row_dim)


def padded_rows(r: int | np.ndarray, n_items: int, pad_min: int, fixed_rows: int = 0) -> np.ndarray:
    """Keys a client with r real rows sends: the next power of two >= max(r, pad_min), capped at n;
    with fixed_rows > 0 exactly min(fixed_rows, n) whatever r (so the count says nothing)."""
    if fixed_rows > 0:
        return np.full(np.shape(r), min(fixed_rows, n_items), np.int64) if np.ndim(r) else np.int64(min(fixed_rows, n_items))
    r = np.maximum(np.asarray(r, np.int64), max(1, pad_min))
    p = np.left_shift(1, np.ceil(np.log2(r)).astype(np.int64))
    return np.minimum(np.maximum(p, r), n_items)


def upload_bytes(r: int | np.ndarray, lay: Layout, s: SecAggSettings) -> np.ndarray:
    """Exact bytes one client sends (both sealed payloads) for r real rows."""
    P = padded_rows(r, lay.n_items, s.pad_min, s.fixed_rows)
    return 2 * (channel.OVERHEAD + P * lay.key_bytes) + SEED + 4 * lay.dense


def rows_sent(r: int, s: SecAggSettings, rnd: int, user: int) -> np.ndarray:
    """Which of a client's r rows (positions, sorted) it sends in round ``rnd``: all of them, or under
    fixed_rows a random subset of fixed_rows drawn from (seed, round, user), the same on the device and
    in the engine. The rows it does not send this round are updated in later rounds."""
    if s.fixed_rows <= 0 or r <= s.fixed_rows:
        return np.arange(r)
    rng = np.random.default_rng([s.seed, rnd, int(user), 0x5EC])
    return np.sort(rng.choice(r, s.fixed_rows, replace=False))


def encode_rows(row_delta: np.ndarray, s: SecAggSettings) -> np.ndarray:
    """(R, H1 + 1) float deltas [row, bias] -> (R, H1 + 2) int64 fixed-point values with the count 1."""
    q = quantize(row_delta, s.frac_bits, s.max_clients)
    return np.concatenate([q, np.full((len(q), 1), int(s.counts), np.int64)], 1)


def encode_dense(dense_delta: np.ndarray, s: SecAggSettings) -> np.ndarray:
    return quantize(dense_delta, s.frac_bits, s.max_clients)


def _mask(seed: bytes, n: int) -> np.ndarray:
    """AES-128-CTR keystream of ``seed`` as n uint32 values (the dense mask)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype="<u4").astype(np.uint32)


def client_payloads(ids: np.ndarray, row_delta: np.ndarray, dense_delta: np.ndarray, lay: Layout,
                    s: SecAggSettings) -> tuple[bytes, bytes]:
    """A client's two plaintext payloads (for A, for B). ids (R,), row_delta (R, H1 + 1), dense_delta (D,)."""
    import os

    ids = np.asarray(ids, np.int64)
    R = len(ids)
    P = int(padded_rows(R, lay.n_items, s.pad_min, s.fixed_rows))
    if R > P or row_delta.shape != (R, lay.h1 + 1) or np.shape(dense_delta) != (lay.dense,):
        raise ValueError("client update does not fit the layout")
    betas = np.zeros((P, lay.row_dim), np.uint32)
    betas[:R] = to_ring(encode_rows(row_delta, s))
    pad = np.frombuffer(os.urandom(8 * (P - R)), dtype=np.uint64) % np.uint64(lay.n_items)
    alphas = np.concatenate([ids, pad.astype(np.int64)])
    order = np.random.default_rng(np.frombuffer(os.urandom(8), np.uint64)).permutation(P)   # real keys not first
    k0, k1 = dpf.gen(alphas[order], betas[order], lay.n_items)
    seed = os.urandom(SEED)
    masked = ring_sub(to_ring(encode_dense(dense_delta, s)), _mask(seed, lay.dense))
    return k0.tobytes() + seed, k1.tobytes() + masked.astype("<u4").tobytes()


def dense_payloads(q: np.ndarray) -> tuple[bytes, bytes]:
    """Additive shares of a fixed-point vector q (D,) int64: (16-byte seed for A, masked vector for B)."""
    import os

    seed = os.urandom(SEED)
    masked = ring_sub(to_ring(q), _mask(seed, len(q)))
    return seed, masked.astype("<u4").tobytes()


def aad(run_id: str, rnd: int | str, user: int, party: int) -> bytes:
    return f"fedrec-secagg|{run_id}|{rnd}|{user}|{party}".encode()


def seal_payloads(public: tuple[bytes, bytes], run_id: str, rnd: int, user: int, plain: tuple[bytes, bytes]
                  ) -> tuple[bytes, bytes]:
    return tuple(channel.seal(public[p], plain[p], aad(run_id, rnd, user, p)) for p in (0, 1))  # type: ignore


@dataclass
class Aggregator:
    """One of the two aggregators. ``receive`` opens and checks a client's payload; ``share`` returns
    this aggregator's share of the sums over the clients both aggregators accepted."""
    party: int                       # 0 = A, 1 = B
    private_key: object              # X25519PrivateKey
    lay: Layout
    settings: SecAggSettings
    run_id: str
    round: int = -1
    expected: set = field(default_factory=set)
    keys: dict = field(default_factory=dict)       # user -> (P, key_bytes) uint8
    dense: dict = field(default_factory=dict)      # user -> bytes (A: seed) | (D,) uint32 (B)

    def open_round(self, rnd: int, users) -> None:
        self.round, self.expected = rnd, {int(u) for u in users}
        self.keys, self.dense = {}, {}

    def _open(self, user: int, sealed: bytes, context: int | str, expected: set, seen: dict, what: str) -> bytes:
        """Check that ``user`` is expected and new in ``what``, and open its payload sealed for ``context``."""
        if user not in expected:
            raise RejectedShare(f"user {user} is not a client of {what}")
        if user in seen:
            raise RejectedShare(f"user {user} already sent its share in {what} (replay)")
        try:
            return channel.open_sealed(self.private_key, bytes(sealed), aad(self.run_id, context, user, self.party))
        except channel.OpenError as e:
            raise RejectedShare(f"user {user}: {e}") from None

    def receive(self, user: int, sealed: bytes) -> None:
        user = int(user)
        plain = self._open(user, sealed, self.round, self.expected, self.keys, f"round {self.round + 1}")
        tail = SEED if self.party == 0 else 4 * self.lay.dense
        kb = self.lay.key_bytes
        body = len(plain) - tail
        P = body // kb if body > 0 and body % kb == 0 else -1
        st = self.settings
        if P < 1 or int(padded_rows(P, self.lay.n_items, st.pad_min, st.fixed_rows)) != P:
            raise RejectedShare(f"user {user}: payload of {len(plain)} bytes does not fit the layout")
        self.keys[user] = np.frombuffer(plain[:body], np.uint8).reshape(P, kb)
        d = plain[body:]
        self.dense[user] = d if self.party == 0 else np.frombuffer(d, "<u4").astype(np.uint32)

    def accepted(self) -> set:
        return set(self.keys)

    # -- dense-only rounds (the federated prototypes' code sums) ---------------------------------------
    def open_dense(self, tag: str, users, dim: int) -> None:
        self.dense_tag, self.dense_dim = tag, dim
        self.expected_dense, self.dense_only = {int(u) for u in users}, {}

    def receive_dense(self, user: int, sealed: bytes) -> None:
        user = int(user)
        plain = self._open(user, sealed, self.dense_tag, self.expected_dense, self.dense_only, self.dense_tag)
        want = SEED if self.party == 0 else 4 * self.dense_dim
        if len(plain) != want:
            raise RejectedShare(f"user {user}: payload of {len(plain)} bytes, expected {want}")
        self.dense_only[user] = plain if self.party == 0 else np.frombuffer(plain, "<u4").astype(np.uint32)

    def dense_share(self, users) -> np.ndarray:
        out = np.zeros(self.dense_dim, np.uint32)
        for u in sorted(int(x) for x in users):
            d = self.dense_only[u]
            out = ring_add(out, _mask(d, self.dense_dim) if self.party == 0 else d)
        return out

    def share(self, users) -> tuple[np.ndarray, np.ndarray]:
        """(rows share (N, H1 + 2) uint32, dense share (D,) uint32) over ``users`` (each must be accepted)."""
        users = sorted(int(u) for u in users)
        keys = np.concatenate([self.keys[u] for u in users]) if users else np.zeros((0, self.lay.key_bytes), np.uint8)
        rows = dpf.eval_full_sum(self.party, keys, self.lay.n_items, self.lay.row_dim)
        dense = np.zeros(self.lay.dense, np.uint32)
        for u in users:
            d = _mask(self.dense[u], self.lay.dense) if self.party == 0 else self.dense[u]
            dense = ring_add(dense, d)
        if self.settings.noise_std > 0:
            nr, nd = aggregator_noise(self.party, self.lay, self.settings, self.round)
            rows, dense = ring_add(rows, nr), ring_add(dense, nd)
        return rows, dense


def aggregator_noise(party: int, lay: Layout, s: SecAggSettings, rnd: int) -> tuple[np.ndarray, np.ndarray]:
    """The DP noise one aggregator adds to its share before it leaves: N(0, noise_std^2) on every row
    coordinate (not the count, which is not sent under DP) and every dense coordinate, fixed-point, in
    the ring: (rows (N, H1 + 2), dense (D,)) uint32. Each aggregator adds the full noise, so the revealed
    sum keeps noise_std of noise even against an aggregator that knows its own draw."""
    import secrets

    import torch

    seed = (s.noise_seed * 1_000_003 + rnd) * 2 + party if s.noise_seed is not None else secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed)
    scale = float(2 ** s.frac_bits)
    rows = torch.randn((lay.n_items, lay.row_dim - 1), generator=gen, dtype=torch.float64) * s.noise_std
    dense = torch.randn((lay.dense,), generator=gen, dtype=torch.float64) * s.noise_std
    q = torch.round(rows * scale).to(torch.int64).numpy()
    q = np.concatenate([q, np.zeros((lay.n_items, 1), np.int64)], 1)
    return to_ring(q), to_ring(torch.round(dense * scale).to(torch.int64).numpy())


@dataclass
class Revealed:
    """The round's revealed sums (deltas against the decoder the clients started from)."""
    row_sums: np.ndarray     # (N, H1 + 1) float64: sum of [row delta, bias delta] over the row's senders
    counts: np.ndarray       # (N,) int64: how many clients sent each row (0 where withheld)
    dense_sum: np.ndarray    # (D,) float64
    clients: int
    withheld: int            # rows sent by 1..min_clients-1 clients, left unchanged


def reveal(rows: np.ndarray, dense: np.ndarray, clients: int, s: SecAggSettings) -> Revealed:
    """From the ring sums (the two shares added, or the engine's plain ring sums) to the revealed
    aggregate; rows below the minimum are withheld. RoundRefused below min_clients clients."""
    if clients < s.min_clients:
        raise RoundRefused(f"{clients} client(s) accepted, fewer than the minimum {s.min_clients}: "
                           "nothing is revealed")
    if not s.counts:                 # DP: every row is revealed, noised; no counts, no per-row threshold
        return Revealed(decode(rows[:, :-1], s.frac_bits), np.zeros(len(rows), np.int64),
                        decode(dense, s.frac_bits), clients, 0)
    counts = from_ring(rows[:, -1])
    low = (counts > 0) & (counts < s.min_clients)
    counts = np.where(low, 0, counts)
    row_sums = decode(rows[:, :-1], s.frac_bits)
    row_sums[counts == 0] = 0.0
    return Revealed(row_sums, counts, decode(dense, s.frac_bits), clients, int(low.sum()))


def combine(share_a: tuple[np.ndarray, np.ndarray], share_b: tuple[np.ndarray, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    return ring_add(share_a[0], share_b[0]), ring_add(share_a[1], share_b[1])


def plain_ring_sums(n_items: int, ids: np.ndarray, row_delta: np.ndarray, dense_delta: np.ndarray,
                    s: SecAggSettings) -> tuple[np.ndarray, np.ndarray]:
    """What the protocol's two shares add up to, computed in the clear (the engine's fast path):
    ids (T,) over all clients, row_delta (T, H1 + 1), dense_delta (C, D). Bit-identical to
    ``combine`` of the aggregators' shares for the same clients."""
    import torch

    q = torch.from_numpy(encode_rows(row_delta, s))                            # (T, H1 + 2) int64
    rows = torch.zeros((n_items, q.shape[1]), dtype=torch.int64).index_add_(
        0, torch.from_numpy(np.asarray(ids, np.int64)), q).numpy()
    dense = encode_dense(dense_delta, s).sum(0) if len(dense_delta) else np.zeros(dense_delta.shape[1:], np.int64)
    return to_ring(rows), to_ring(dense)
