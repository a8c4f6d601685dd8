"""The application layer: the ``fedrec`` command line and the benchmarks. It sits on top of
recsys, federation, retrieval and dashboard; nothing below imports it."""
