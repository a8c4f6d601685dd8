"""The batched product with each client's personal 128x256 layer, cache-hot and cache-cold
(docs/benchmarks.md, "Speed (2026-12-03, later)"): 94 clients (12 MB), as in an implicit round.

    .venv/bin/python docs/experiments/2026-12-03-engine/cold_bmm.py
"""
import time

import torch

P = torch.randn(94, 128, 256)
h, d = torch.randn(94, 256), torch.randn(94, 128)
junk = torch.randn(16 * 1024 * 1024)                    # 64 MB, touched to evict P from cache


def ms(f, cold: bool, n: int = 30) -> float:
    total = 0.0
    for _ in range(n):
        if cold:
            junk.add_(1.0)
        t = time.perf_counter()
        f()
        total += time.perf_counter() - t
    return round(total / n * 1e3, 3)


fwd = lambda: torch.bmm(h.unsqueeze(1), P.transpose(1, 2))        # noqa: E731  (B, 1, 128)
bwd = lambda: torch.bmm(d.unsqueeze(1), P)                        # noqa: E731  (B, 1, 256)
print("forward ms hot", ms(fwd, False), "cold", ms(fwd, True), "| backward ms hot", ms(bwd, False), "cold", ms(bwd, True))
