"""Batched products with per-client matrices, the CPU engine's hot loop.

A personalfr client keeps its own 128 x 256 encoder layer, so every local step multiplies each
client's matrix with one vector, forward (P @ h) and backward (P^T d). torch.bmm runs these as one
small GEMM per client and moves about 12 GB/s on the 2-core development VM, where a plain torch pass
over memory reaches ~28 GB/s from DRAM and ~100 GB/s from cache
(0b68109:docs/experiments/2026-12-03-kernels/stream.py; docs/benchmarks.md, 2026-12-03 evening).
The numba kernels below stream each client's matrix once, a client per thread, and read it straight
from the client store by row index (``Rows``), so a cohort's matrices are neither gathered into a
buffer nor copied back: ``update_rows`` writes the trained values in place.

Every kernel has a torch version (``*_reference``: the obviously-correct one and the fallback), used
on CUDA, for tensors that need autograd, where numba is missing, and by tests/test_kernels.py to check
the kernels. The kernels change the summation order only (reassociation), so they agree with the torch
versions to float rounding.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from recsys.models import autoencoder as ae

log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Rows:
    """Rows ``index`` (B,) of a per-client tensor ``src`` (R, O, I), read in place by the kernels."""
    src: torch.Tensor
    index: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.index.shape[0], *self.src.shape[1:]))

    def dim(self) -> int:
        return self.src.dim()

    def materialize(self) -> torch.Tensor:
        """(B, O, I) copy of the rows."""
        return self.src.index_select(0, self.index)


def _dense(P: torch.Tensor | Rows) -> torch.Tensor:
    return P.materialize() if isinstance(P, Rows) else P


_KERNEL_FILES = ("_exp.py", "_products.py", "_row_sums.py", "_local_steps.py", "_masks.py", "_quantize.py")


@functools.cache
def kernel_fingerprint() -> str:
    """Hash of the kernel sources, numba's version and this CPU: what the on-disk cache depends on."""
    import hashlib
    import platform

    import numba as nb

    h = hashlib.sha256(f"{nb.__version__}|{platform.machine()}|{platform.processor()}".encode())
    for name in _KERNEL_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    try:
        from llvmlite import binding as llvm                # the CPU numba compiles for

        h.update(f"{llvm.get_host_cpu_name()}|{llvm.get_host_cpu_features().flatten()}".encode())
    except Exception:                                      # noqa: BLE001 (no llvmlite host query: name only)
        pass
    return h.hexdigest()[:16]


def kernel_home() -> Path:
    """The content-addressed directory the kernels are imported from and cached in:
    $FEDREC_KERNEL_CACHE (default ~/.cache/fedrec/kernels) / <kernel_fingerprint()>. Every copy of these
    sources with the same bytes — the repository, an installed package, the copy a Flower SuperNode
    unpacks for each run — shares one numba cache there, because numba keys its cache by the source
    file's path and modification time."""
    import os

    base = os.environ.get("FEDREC_KERNEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedrec" / "kernels"
    return Path(base) / kernel_fingerprint()


@functools.cache
def numba_modules() -> SimpleNamespace:
    """The kernel modules (_exp, _products, _row_sums, _local_steps, _masks, _quantize), imported from
    ``kernel_home()`` (written there once, atomically); from this package where that cannot be written."""
    import importlib
    import importlib.util
    import os
    import sys
    import tempfile

    names = [f[:-3] for f in _KERNEL_FILES]
    try:
        home = kernel_home()
        if not (home / "__init__.py").exists():     # each file written whole (tmp + rename), __init__ last
            home.mkdir(parents=True, exist_ok=True)
            for f in (*_KERNEL_FILES, "__init__.py"):
                fd, tmp = tempfile.mkstemp(prefix=f".{f}.", dir=home)
                with os.fdopen(fd, "wb") as out:
                    out.write((Path(__file__).parent / f).read_bytes() if f != "__init__.py"
                              else b'"""fedrec engine kernels (a content-addressed copy)."""\n')
                os.replace(tmp, home / f)
        pkg = f"_fedrec_kernels_{home.name}"
        if pkg not in sys.modules:
            spec = importlib.util.spec_from_file_location(pkg, home / "__init__.py",
                                                          submodule_search_locations=[str(home)])
            mod = importlib.util.module_from_spec(spec)
            sys.modules[pkg] = mod
            spec.loader.exec_module(mod)
    except OSError as e:
        log.warning("kernel cache directory not writable (%s): kernels compile in each process", e)
        pkg = __name__
    return SimpleNamespace(**{n: importlib.import_module(f"{pkg}.{n}") for n in names})


def _stamp_path() -> Path:
    """The 'cache is warm' stamp, beside the cached kernels."""
    return kernel_home() / "warm.stamp"


def _warm_cache() -> None:
    """Make sure numba's on-disk cache holds the kernels before this process loads them. On a cold
    cache (a fresh install, an edited kernel, another CPU) a child process compiles every kernel for
    the signatures the engine uses and writes the cache (``python -m federation.engine.kernels.warm``,
    which ``make`` runs after installing), so this process, like every later one, loads the same
    machine code instead of compiling its own (~50 s). FEDREC_KERNEL_WARM=0 skips the child (the
    kernels then compile in-process as needed and are cached for the next process)."""
    import os
    import subprocess
    import sys

    if os.environ.get("FEDREC_KERNEL_WARM", "1") == "0" or _stamp_path().exists():
        return
    log.info("compiling the engine's numba kernels once for this install (about a minute)")
    env = dict(os.environ, FEDREC_KERNEL_WARM="0")
    r = subprocess.run([sys.executable, "-m", "federation.engine.kernels.warm"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        log.warning("kernel warm-up failed (rc %s); compiling in process: %s", r.returncode, r.stdout[-2000:])


@functools.cache
def _kernels() -> SimpleNamespace | None:
    """The compiled kernels (federation/engine/kernels/_*.py), or None where numba is not installed.
    Compiled once per install into numba's on-disk cache and loaded from it by every process
    (``_warm_cache``), so a job starts without the compile wait and every process runs the same
    machine code: a resumed run reproduces an uninterrupted one bit for bit."""
    try:
        import numba as nb
    except ImportError:
        log.info("numba not installed: per-client products use torch.bmm")
        return None
    _warm_cache()
    m = numba_modules()
    _local_steps, _masks, _products, _row_sums = m._local_steps, m._masks, m._products, m._row_sums

    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))
    return SimpleNamespace(bmv=_products.bmv, bmtv=_products.bmtv, update_rows=_products.update_rows,
                           item_sums=_row_sums.item_sums, decoder_row_sums=_row_sums.decoder_row_sums,
                           dropout_masks=_masks.dropout_masks, sampled_dots=_products.sampled_dots,
                           pattern_mm=_products.pattern_mm, add_lowrank=_products.add_lowrank,
                           local_steps_explicit=_local_steps.local_steps_explicit,
                           local_steps_implicit=_local_steps.local_steps_implicit, num_threads=nb.get_num_threads,
                           quantized_sum=m._quantize.quantized_sum, quantized_rows=m._quantize.quantized_rows,
                           rows_from_factors=_products.rows_from_factors)


def available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the kernels run for tensors of this dtype and device."""
    return torch.device(device).type == "cpu" and dtype in _DTYPES and _kernels() is not None


def _usable(P: torch.Tensor | Rows, *ts: torch.Tensor) -> SimpleNamespace | None:
    """The kernels when P and every tensor are contiguous CPU float32/float64 of one dtype, no autograd."""
    src = P.src if isinstance(P, Rows) else P
    if src.device.type != "cpu" or src.dtype not in _DTYPES or not src.is_contiguous() or src.requires_grad:
        return None
    if any(t.dtype != src.dtype or t.device != src.device or t.requires_grad for t in ts):
        return None
    return _kernels()


def _parts(P: torch.Tensor | Rows):
    """(source array, row index array) of P for the kernels."""
    if isinstance(P, Rows):
        return P.src.numpy(), P.index.contiguous().numpy()
    return P.numpy(), torch.arange(P.shape[0]).numpy()


def bmv_reference(P: torch.Tensor | Rows, h: torch.Tensor) -> torch.Tensor:
    """P (B, O, I), h (B, I) -> (B, O): each client's P_b @ h_b."""
    # Row-vector form (h^T P^T) runs ~3x faster than P @ h with torch on CPU.
    return torch.bmm(h.unsqueeze(1), _dense(P).transpose(1, 2)).squeeze(1)


def bmtv_reference(P: torch.Tensor | Rows, d: torch.Tensor) -> torch.Tensor:
    """P (B, O, I), d (B, O) -> (B, I): each client's P_b^T @ d_b."""
    return torch.bmm(d.unsqueeze(1), _dense(P)).squeeze(1)


def bmv(P: torch.Tensor | Rows, h: torch.Tensor) -> torch.Tensor:
    """P (B, O, I) or Rows, h (B, I) -> (B, O): P_b @ h_b for every client b."""
    k = _usable(P, h)
    if k is None:
        return bmv_reference(P, h)
    out = h.new_empty(P.shape[:2])
    k.bmv(*_parts(P), h.contiguous().numpy(), out.numpy())
    return out


def bmtv(P: torch.Tensor | Rows, d: torch.Tensor) -> torch.Tensor:
    """P (B, O, I) or Rows, d (B, O) -> (B, I): P_b^T @ d_b for every client b."""
    k = _usable(P, d)
    if k is None:
        return bmtv_reference(P, d)
    out = d.new_empty((P.shape[0], P.shape[2]))
    k.bmtv(*_parts(P), d.contiguous().numpy(), out.numpy())
    return out


def update_rows_reference(P: Rows, a: float, U: torch.Tensor, V: torch.Tensor) -> None:
    """P.src[P.index[b]] = a * P.src[P.index[b]] + U[b] @ V[b]; U (B, O, S), V (B, S, I); index distinct."""
    P.src.index_copy_(0, P.index, torch.baddbmm(P.materialize(), U, V, beta=a).to(P.src.dtype))


def update_rows(P: Rows, a: float, U: torch.Tensor, V: torch.Tensor) -> None:
    """As update_rows_reference, in one pass over the rows and without a copy where the kernels apply."""
    k = _usable(P, U, V)
    if k is None:
        return update_rows_reference(P, a, U, V)
    k.update_rows(*_parts(P), float(a), U.contiguous().numpy(), V.contiguous().numpy())


def add_lowrank_reference(base: torch.Tensor, K: torch.Tensor, U: torch.Tensor, v: torch.Tensor, c0: float,
                          W: torch.Tensor, s: int) -> torch.Tensor:
    """base (B, E) + sum_{j<s} K[b, j] (U[b, j] . v[b] + c0) W[b, j] per client b: the earlier local
    steps' rank-one terms of a layer. K (B, s), U (B, S, D), v (B, D), W (B, S, E) with S >= s."""
    w = K * ((U[:, :s] * v.unsqueeze(1)).sum(2) + c0)                                     # (B, s)
    return base + torch.bmm(w.unsqueeze(1), W[:, :s]).squeeze(1)


def add_lowrank_(base: torch.Tensor, K: torch.Tensor, U: torch.Tensor, v: torch.Tensor, c0: float,
                 W: torch.Tensor, s: int) -> torch.Tensor:
    """As add_lowrank_reference in one pass; the kernel adds into base in place (and returns it), the
    torch fallback (autograd, CUDA, no numba) returns a new tensor. One kernel instead of five ops
    (~15 vs ~100 us at B = 94)."""
    k = _usable(U, K, v, W, base)
    if k is None or not (base.is_contiguous() and K.is_contiguous() and v.is_contiguous() and W.is_contiguous()):
        return add_lowrank_reference(base, K, U, v, c0, W, s)
    k.add_lowrank(base.numpy(), K.numpy(), U.numpy(), v.numpy(), float(c0), W.numpy(), int(s))
    return base


def _indexed(P: torch.Tensor | Rows, B: int) -> tuple:
    """(source array (R, O, I), row index (B,)) of a per-client matrix, its Rows, or a shared (O, I) one."""
    if isinstance(P, Rows):
        return _parts(P)
    if P.dim() == 2:
        return P.unsqueeze(0).numpy(), np.zeros(B, dtype=np.int64)
    return P.numpy(), np.arange(B, dtype=np.int64)


def _step_args(P2, b2, P3, b3, E0x, tie, xx1, keep, a, bco, clip, crow) -> tuple:
    """The fused kernels' leading arguments, as numpy arrays (see local_steps_explicit)."""
    B, dt = E0x.shape[0], E0x.dtype
    S = keep.shape[0]
    c = lambda t: t.contiguous().numpy()                                       # noqa: E731
    full = lambda v, n: c(v.expand(B, n) if v.dim() == 1 else v)               # noqa: E731
    return (*_indexed(P2, B), full(b2, keep.shape[2]), *_indexed(P3, B), full(b3, E0x.shape[1]), c(E0x),
            full(tie, E0x.shape[1]), c(xx1), c(keep), np.asarray(a[:S], dtype=_np_dtype(dt)),
            _coefficients(bco[:S], dt), float(clip or 0.0), c(crow))


def _hist_args(hist: dict[str, torch.Tensor]) -> tuple:
    return tuple(hist[n].numpy() for n in ("d1", "h1", "d2", "z", "d3", "h3", "e", "c"))


def _write_args(P2, a: list[float], bco: list[list[float]], S: int, dtype: torch.dtype, write_P2: bool) -> tuple:
    """The fused kernels' trailing arguments: the end coefficients and whether to write P2 in place."""
    if write_P2 and not isinstance(P2, Rows):
        raise ValueError("write_P2 needs P2 as Rows of the client store (the trained values go there)")
    return float(a[S]), np.asarray(bco[S][:S], dtype=_np_dtype(dtype)), bool(write_P2)


def local_steps_explicit(P2: torch.Tensor | Rows, b2: torch.Tensor, P3: torch.Tensor | Rows, b3: torch.Tensor,
                         E0x: torch.Tensor, tie: torch.Tensor, xx1: torch.Tensor, keep: torch.Tensor,
                         a: list[float], bco: list[list[float]], clip: float | None, crow: torch.Tensor,
                         items: torch.Tensor, x: torch.Tensor, W: torch.Tensor, ob: torch.Tensor, cnt: torch.Tensor,
                         hist: dict[str, torch.Tensor], loss: torch.Tensor, write_P2: bool = False) -> bool:
    """All local steps of an explicit cohort with shared item rows in one kernel (see the kernel's
    comment; federation.engine.cohort.train_cohort is the torch version). Writes hist[d1|h1|d2|z|d3|h3]
    (B, S, .), hist[e] (T, S), hist[c] (B, S) and loss (B,) (the sum over steps); False (nothing
    written) where the kernels do not apply. P2/P3: (B, O, I) per client, Rows, or shared (O, I);
    b2 (B, H2) and b3 (B, H1) per client or shared (H,). a (S+1,), bco (S+1, S): sgd_coefficients.
    write_P2 (P2 Rows of the store): also write each client's trained P2 into the store, after its
    last step while the matrix is in cache (what update_rows would do afterwards, one read less)."""
    ts = (b2, b3, E0x, tie, xx1, keep, x, W, ob, cnt, loss, *hist.values())
    k = _usable(P2, *ts)
    if k is None or _usable(P3, *ts) is None or not all(t.is_contiguous() for t in (W, *hist.values())):
        return False
    k.local_steps_explicit(*_step_args(P2, b2, P3, b3, E0x, tie, xx1, keep, a, bco, clip, crow),
                           items.contiguous().numpy(), x.contiguous().numpy(), W.numpy(), ob.contiguous().numpy(),
                           cnt.contiguous().numpy(), *_hist_args(hist), loss.numpy(),
                           *_write_args(P2, a, bco, keep.shape[0], E0x.dtype, write_P2))
    return True


@contextlib.contextmanager
def _single_threaded_blas():
    """OpenBLAS (scipy's, which numba's np.dot calls) limited to one thread: local_steps_implicit calls
    it from each of its own threads, and a threaded OpenBLAS inside an OpenMP loop oversubscribes the
    cores (20x slower on the 2-core VM, with an OpenBLAS warning per call). Set on the libraries
    directly: threadpoolctl's limit() reads every library's info each time (~0.1 ms)."""
    libs = [lc for lc in _blas_controller().lib_controllers if lc.user_api == "blas"]
    before = [lc.num_threads for lc in libs]
    for lc in libs:
        lc.set_num_threads(1)
    try:
        yield
    finally:
        for lc, n in zip(libs, before):
            lc.set_num_threads(n)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded thread pools, taken once (~2 ms each time otherwise)."""
    import scipy.linalg.cython_blas  # noqa: F401  loads the library numba's np.dot uses, so it is seen
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def local_steps_implicit(P2: torch.Tensor | Rows, b2: torch.Tensor, P3: torch.Tensor | Rows, b3: torch.Tensor,
                         E0x: torch.Tensor, tie: torch.Tensor, xx1: torch.Tensor, keep: torch.Tensor,
                         a: list[float], bco: list[list[float]], clip: float | None, crow: torch.Tensor,
                         items: torch.Tensor, W: torch.Tensor, ob: torch.Tensor, cnt: torch.Tensor,
                         hist: dict[str, torch.Tensor], loss: torch.Tensor, write_P2: bool = False) -> bool:
    """All local steps of an implicit cohort with frozen start rows W (N, H1), ob (N,) in one kernel,
    as local_steps_explicit (no ratings x: an implicit entry is a positive)."""
    ts = (b2, b3, E0x, tie, xx1, keep, W, ob, cnt, loss, *hist.values())
    k = _usable(P2, *ts)
    if k is None or _usable(P3, *ts) is None or not all(t.is_contiguous() for t in (W, *hist.values())):
        return False
    with _single_threaded_blas():
        k.local_steps_implicit(*_step_args(P2, b2, P3, b3, E0x, tie, xx1, keep, a, bco, clip, crow),
                               items.contiguous().numpy(), W.numpy(), ob.contiguous().numpy(),
                               cnt.contiguous().numpy(), max(1, min(E0x.shape[0], k.num_threads())),
                               max(1, min(item_ranges(W.shape[0], k.num_threads()), W.shape[0])),
                               *_hist_args(hist), loss.numpy(),
                               *_write_args(P2, a, bco, keep.shape[0], E0x.dtype, write_P2))
    return True


def item_ranges(n_items: int, threads: int) -> int:
    """How many contiguous item ranges local_steps_implicit runs its softmax products in: one per
    thread, each of at least 256 items. Two ranges of 841 items with all 94 clients take 0.46 ms per
    product where two client blocks of 47 with all items take 0.55 ms: the rows are packed for twice
    as many clients (0b68109:docs/experiments/2026-12-04-ranges/gemm_split.py). The sums over ranges make
    results depend on the thread count in the last bits, as torch's own CPU products do."""
    return max(1, min(threads, n_items // 256))


def _np_dtype(dtype: torch.dtype) -> type:
    """The numpy dtype of a torch float dtype."""
    return np.float64 if dtype == torch.float64 else np.float32


def _coefficients(bco: list[list[float]], dtype: torch.dtype) -> np.ndarray:
    """sgd_coefficients' b (ragged: b[s] has s entries) as a zero-padded (S, S) array."""
    S = len(bco)
    out = np.zeros((S, S), dtype=_np_dtype(dtype))
    for s, row in enumerate(bco):
        out[s, :len(row[:s])] = row[:s]
    return out


def item_sums_reference(items: torch.Tensor, seg: torch.Tensor, vals: torch.Tensor, H: torch.Tensor,
                        n_items: int) -> torch.Tensor:
    """(N, D): row i = sum over the entries t with items[t] = i and steps s of vals[t, s] * H[seg[t], s].
    items, seg (T,), vals (T, S), H (B, S, D)."""
    per_entry = torch.bmm(vals.unsqueeze(1), H.index_select(0, seg)).squeeze(1)            # (T, D)
    return per_entry.new_zeros((n_items, H.shape[2])).index_add_(0, items, per_entry)


def item_sums(order: torch.Tensor, crow: torch.Tensor, seg: torch.Tensor, vals: torch.Tensor, H: torch.Tensor,
              out: torch.Tensor) -> bool:
    """Add item_sums_reference into out (N, D) in place, for entries listed by item (order (T,) entry
    ids sorted by item, crow (N+1,) CSR starts), one item per thread. False (out untouched) where the
    kernels do not apply; the caller then uses its own sparse product, which unlike the reference needs
    no (T, D) temporary."""
    k = _usable(H, vals, out)
    if k is None or not out.is_contiguous():
        return False
    k.item_sums(order.contiguous().numpy(), crow.contiguous().numpy(), seg.contiguous().numpy(),
                vals.contiguous().numpy(), H.contiguous().numpy(), out.numpy())
    return True


def decoder_row_sums(order: torch.Tensor, crow: torch.Tensor, seg: torch.Tensor, w: torch.Tensor, K: torch.Tensor,
                     E: torch.Tensor, H: torch.Tensor, W0: torch.Tensor, ob0: torch.Tensor, a_end: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The holder-weighted sums of a cohort's trained decoder rows and biases, both in one pass over
    the entries listed by item (order (T,), crow (N+1,) as item_sums): (N, H1) rows, (N,) biases and the
    (N,) weight sums, where a client b's trained row i is a_end W0[i] + sum_s K[b, s] E[t, s] H[b, s]
    for its entry t of item i (FactoredResult.value). w (B,), K (B, S), E (T, S), H (B, S, H1), W0 (N, H1),
    ob0 (N,). None where the kernels do not apply (FactoredResult.row_sums is the torch version)."""
    k = _usable(H, w, K, E, W0, ob0)
    if k is None or not all(t.is_contiguous() for t in (H, K, E, W0)):
        return None
    N, D = W0.shape
    out, outb, wsum = H.new_empty((N, D)), H.new_empty(N), H.new_empty(N)
    k.decoder_row_sums(order.contiguous().numpy(), crow.contiguous().numpy(), seg.contiguous().numpy(),
                       w.contiguous().numpy(), K.numpy(), E.numpy(), H.numpy(), W0.numpy(), ob0.contiguous().numpy(),
                       float(a_end), out.numpy(), outb.numpy(), wsum.numpy())
    return out, outb, wsum


def dropout_keep_steps(seed: int, rnd: int, users: torch.Tensor, steps, dim: int, p: float) -> torch.Tensor:
    """recsys.models.autoencoder.dropout_keep_steps, bit for bit (integer hashing; the kept value is
    torch's own float32 1 / (1 - p)), in one pass instead of ~20 int64 tensor ops."""
    k = _kernels() if users.device.type == "cpu" and p > 0 else None
    if k is None:
        return ae.dropout_keep_steps(seed, rnd, users, steps, dim, p)
    base = ae._mix(torch.tensor([(seed * 1_000_003 + rnd * 7_919 + st * 104_729) % ae._M for st in steps],
                                dtype=torch.int64))                                    # (S,) as the model
    scale = float(torch.ones((), dtype=torch.float32) / (1.0 - p))
    out = torch.empty((len(steps), len(users), dim), dtype=torch.float32)
    k.dropout_masks(base.numpy(), users.to(torch.int64).contiguous().numpy(), float(p), scale, out.numpy())
    return out


def on_pattern(pattern: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The CSR pattern (B, N) with its T entries set to values (T,)."""
    with warnings.catch_warnings():      # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(pattern.crow_indices(), pattern.col_indices(), values.contiguous(),
                                       pattern.shape, check_invariants=False)


def sampled_dots_reference(pattern: torch.Tensor, h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """pattern (B, N) CSR with T entries (b_t, i_t), h (B, D), W (N, D) -> (T,) h[b_t] . W[i_t]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.sampled_addmm(pattern, h, W.T, beta=0.0).values()   # the pattern's values ignored


def sampled_dots(pattern: torch.Tensor, h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """As sampled_dots_reference (a sampled dense-dense product), one pattern row per thread."""
    k = _usable(h, W)
    if k is None:
        return sampled_dots_reference(pattern, h, W)
    out = h.new_empty(pattern.col_indices().shape[0])
    k.sampled_dots(pattern.crow_indices().numpy(), pattern.col_indices().numpy(), h.contiguous().numpy(),
                   W.contiguous().numpy(), out.numpy())
    return out


def pattern_mm_reference(pattern: torch.Tensor, vals: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(B, D): the pattern with values vals (T,) times W (N, D), a sparse-dense product."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.mm(on_pattern(pattern, vals), W)


def pattern_mm(pattern: torch.Tensor, vals: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """As pattern_mm_reference, one pattern row per thread."""
    k = _usable(W, vals)
    if k is None:
        return pattern_mm_reference(pattern, vals, W)
    out = W.new_empty((pattern.shape[0], W.shape[1]))
    k.pattern_mm(pattern.crow_indices().numpy(), pattern.col_indices().numpy(), vals.contiguous().numpy(),
                 W.contiguous().numpy(), out.numpy())
    return out


# -- secure aggregation: fixed-point sums (federation.privacy.fixedpoint) -------------------------------------
def quantized_sum_reference(X: torch.Tensor, G: torch.Tensor, f: torch.Tensor | None, frac_bits: int,
                            bound: int) -> torch.Tensor:
    """X (B, D) clients' values, G (D,) global, f (B,) clip factors or None -> (D,) int64:
    sum_b quantize((X_b - G) * f_b), each client quantized on its own (float32)."""
    from federation.privacy.fixedpoint import quantize_torch

    d = X.float() - G.float()
    if f is not None:
        d = d * f.float()[:, None]
    return quantize_torch(d, frac_bits, 0, bound).sum(0)


def quantized_sum(X: torch.Tensor, G: torch.Tensor, f: torch.Tensor | None, frac_bits: int, bound: int) -> torch.Tensor:
    """As quantized_sum_reference, in one pass (one output column per thread)."""
    k = _usable(X, G) if X.dtype == torch.float32 else None
    if k is None:
        return quantized_sum_reference(X, G, f, frac_bits, bound)
    B, D = X.shape
    out = np.zeros(D, np.int64)
    fa = (f.float() if f is not None else torch.ones(B)).contiguous().numpy()
    k.quantized_sum(X.contiguous().numpy(), G.contiguous().numpy(), fa, np.float32(2 ** frac_bits),
                    np.float32(2 ** 30), np.int64(bound), out)
    return torch.from_numpy(out)


def quantized_rows_reference(V: torch.Tensor, G: torch.Tensor, items: torch.Tensor, f: torch.Tensor | None,
                             seg: torch.Tensor, frac_bits: int, bound: int, n_rows: int) -> torch.Tensor:
    """V (T, D) entries' values for rows items (T,) of G (N, D), f (B,) clip factors by client seg (T,)
    -> (N, D) int64: per row, the sum of its entries' quantized (V_t - G_i) * f_b."""
    from federation.privacy.fixedpoint import quantize_torch

    d = V.float() - G.float()[items]
    if f is not None:
        d = d * f.float()[seg, None]
    out = torch.zeros(n_rows, V.shape[1], dtype=torch.int64, device=V.device)
    return out.index_add_(0, items, quantize_torch(d, frac_bits, 0, bound))


def quantized_rows(V: torch.Tensor, G: torch.Tensor, items: torch.Tensor, f: torch.Tensor | None, seg: torch.Tensor,
                   frac_bits: int, bound: int, n_rows: int) -> torch.Tensor:
    """As quantized_rows_reference, in one pass (one output column per thread)."""
    k = _usable(V, G) if V.dtype == torch.float32 else None
    if k is None:
        return quantized_rows_reference(V, G, items, f, seg, frac_bits, bound, n_rows)
    out = np.zeros((n_rows, V.shape[1]), np.int64)
    B = int(seg.max()) + 1 if len(seg) else 0
    fa = (f.float() if f is not None else torch.ones(B)).contiguous().numpy()
    k.quantized_rows(V.contiguous().numpy(), G.contiguous().numpy(), items.contiguous().numpy(), fa,
                     seg.contiguous().numpy(), np.float32(2 ** frac_bits), np.float32(2 ** 30), np.int64(bound), out)
    return torch.from_numpy(out)


def rows_from_factors_reference(P0: torch.Tensor, items: torch.Tensor, seg: torch.Tensor, KE: torch.Tensor,
                                H: torch.Tensor, a: float) -> torch.Tensor:
    """Trained item rows of a cohort's entries from the step factors: (T, D) = a P0[items] + sum_s
    KE[:, s] H[seg, s]; P0 (N, D) shared start rows, KE (T, S), H (B, S, D)."""
    return torch.baddbmm(P0.index_select(0, items).unsqueeze(1), KE.unsqueeze(1), H.index_select(0, seg),
                         beta=a).squeeze(1)


def rows_from_factors(P0: torch.Tensor, items: torch.Tensor, seg: torch.Tensor, KE: torch.Tensor, H: torch.Tensor,
                      a: float) -> torch.Tensor:
    """As rows_from_factors_reference, one entry per thread, without gathering H per entry."""
    k = _usable(P0, KE, H)
    if k is None or not (P0.is_contiguous() and KE.is_contiguous() and H.is_contiguous()):
        return rows_from_factors_reference(P0, items, seg, KE, H, a)
    out = P0.new_empty(items.shape[0], P0.shape[1])
    k.rows_from_factors(P0.numpy(), items.contiguous().numpy(), seg.contiguous().numpy(), KE.numpy(), H.numpy(),
                        _np_dtype(P0.dtype)(a), out.numpy())
    return out
