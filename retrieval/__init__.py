"""FAISS indices (index.py), builders (build.py), summaries, embedders, query-time retrieval, CLI."""
