"""Benchmarks (``fedrec bench``, ``make bench``): they measure the product packages from above."""
