"""FAISS indices, user summaries and embedders (see the retrieval issue; not built yet)."""
