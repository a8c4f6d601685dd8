"""Memory bandwidth of plain torch passes (sum = read, copy = read + write) at four sizes, for the
figures in federation/kernels.py and docs/benchmarks.md (2026-12-03, kernels).

    .venv/bin/python docs/experiments/2026-12-03-kernels/stream.py
"""
import time, torch
for mb in (4, 12, 37, 256):
    a = torch.randn(mb * 262144); b = torch.empty_like(a)
    for name, f in (("read (sum)", lambda: a.sum()), ("copy", lambda: b.copy_(a))):
        for _ in range(3): f()
        n = max(3, 2000 // mb); t = time.perf_counter()
        for _ in range(n): f()
        dt = (time.perf_counter() - t) / n
        moved = mb * (1 if name.startswith("read") else 2)
        print(f"{mb:4d} MB {name:10s} {moved / 1024 / dt:6.1f} GB/s")
