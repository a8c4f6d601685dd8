"""Compile every engine kernel into numba's on-disk cache: ``python -m federation.engine.kernels.warm``.

Runs a few tiny federated rounds on the CPU (explicit and implicit; float32 and float64; shared and
personal rows; with and without content), which call each kernel with the signatures training uses,
then writes the stamp that tells later processes the cache is warm (federation.engine.kernels._warm_cache).
``make`` runs it once after installing. Exit code 0 when the stamp was written.
"""
from __future__ import annotations

import fcntl
import os
import sys
import time


def main() -> int:
    os.environ["FEDREC_KERNEL_WARM"] = "0"          # this process is the warm-up: never recurse
    import numpy as np
    import scipy.sparse as sp
    import torch

    from federation.engine import kernels
    from federation.privacy.dp import DPSettings
    from federation.simulation import Federation, FedSettings
    from recsys.models.autoencoder import AEShape

    kernels.numba_modules()                          # the content-addressed copy of the sources
    stamp = kernels._stamp_path()
    with open(stamp.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)             # one warm-up at a time; a second one finds the stamp
        if stamp.exists():
            return 0
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        users, n_items = 24, 300                      # > 256 items: the implicit kernel's item ranges run
        rows = np.repeat(np.arange(users), 12)
        cols = np.concatenate([rng.choice(n_items, 12, replace=False) for _ in range(users)])
        train = sp.csr_matrix((rng.integers(1, 6, len(rows)).astype(np.float64), (rows, cols)), (users, n_items))
        content = torch.randn(n_items, 4, generator=torch.Generator().manual_seed(0))
        for dtype in (torch.float32, torch.float64):
            for mode in ("explicit", "implicit"):
                for strategy, feats in (("personalfr", None), ("personalfr", content), ("fedavg", None),
                                        ("local", None)):
                    shape = AEShape(n_items, h1=16, h2=8, mode=mode, content_dim=0 if feats is None else 4)
                    fed = Federation(shape, FedSettings(strategy=strategy, rounds=2, fraction=0.5, local_epochs=2),
                                     train, dtype=dtype, content=feats)
                    fed.run_round()
                    fed.user_scores(np.arange(4))
        from federation.privacy.secagg import SecAggSettings           # secure aggregation's fixed-point sums
        for dp in (None, DPSettings(1.0, 1.0, 1e-4)):
            shape = AEShape(n_items, h1=16, h2=8, mode="implicit")
            fed = Federation(shape, FedSettings(rounds=2, fraction=0.5, local_epochs=2, dp=dp,
                                                secagg=SecAggSettings(min_clients=1, noise_std=0.1 if dp else 0.0)),
                             train, dtype=torch.float32)
            fed.run_round()
        stamp.write_text(f"warmed in {time.perf_counter() - t0:.1f} s\n")
    print(f"numba kernels compiled into the cache ({stamp.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
