"""Item content features from open_clip (image + text towers), cached with a manifest.

One vector per item (UniMP-style content, but from CLIP instead of a large VLM):
    fusion "mean": normalize(mean(normalize(image_emb), normalize(text_emb))) when the item has an
        image, normalize(text_emb) when it has none (or its image file is missing/corrupt, which is
        counted and logged, never fatal).
Both towers of one CLIP model live in the same space, so the same extractor embeds a text query
for search (``ClipExtractor.encode_text``).

Models (``ClipSpec.model``):
    an open_clip model name + ``pretrained`` tag (downloads: needs network) or a local checkpoint
    file, e.g. ViT-B-32 + laion2b_s34b_b79k or ViT-B-32 + /models/vit-b-32.safetensors;
    ``local-dir:/path`` or a plain directory holding open_clip_config.json + weights — what
    ``fedrec clip train`` writes;
    ``fedrec-clip-tiny`` (a small config registered with open_clip's add_model_config, random init).
Text-only catalogues may also use ``backend="sentence"`` (the bundled MiniLM sentence model), which
this environment has real pretrained weights for while it has none for CLIP.

The cache (``data/NAME/features/KEY/``) holds features.safetensors + MANIFEST.json (model, weights
checksum, dimension, item ids checksum, fusion, missing images). A cache whose manifest does not match
the request is rebuilt, never reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recsys.errors import ConfigError, ManifestError
from recsys.io import atomic_dir, load_arrays, save_arrays, sha256_file, write_json

log = logging.getLogger(__name__)

TINY = "fedrec-clip-tiny"
FUSIONS = ("mean", "text", "image")
FEATURES_FILE, MANIFEST_FILE = "features.safetensors", "MANIFEST.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClipSpec:
    backend: str = "open_clip"          # open_clip | sentence
    model: str = TINY                   # open_clip name, local-dir:PATH, a directory, or (sentence) a model dir
    pretrained: str | None = None       # open_clip tag or local checkpoint file (names only)
    fusion: str = "mean"                # mean | text | image
    batch_size: int = 64


def _register_tiny() -> None:
    import open_clip

    if TINY not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).parent / "clip_configs" / f"{TINY}.json")


def resolve_model_name(model: str) -> str:
    """A directory becomes open_clip's ``local-dir:`` schema; names pass through."""
    if not model.startswith(("local-dir:", "hf-hub:")) and Path(model).is_dir():
        return f"local-dir:{model}"
    return model


def _weights_id(spec: ClipSpec) -> str:
    """Checksum of the weights the spec loads (a tag is identified by name; random init by 'random')."""
    name = resolve_model_name(spec.model)
    if name.startswith("local-dir:"):
        d = Path(name[len("local-dir:"):])
        files = sorted(p for p in d.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
        if not files:
            raise ConfigError(f"{d}: no model weights in this directory")
        return sha256_file(files[0])[:16]
    if spec.pretrained and Path(spec.pretrained).is_file():
        return sha256_file(spec.pretrained)[:16]
    return f"tag:{spec.pretrained}" if spec.pretrained else "random-init"


class ClipExtractor:
    """Batched image and text towers of one open_clip model (CPU or CUDA). Outputs are L2-normalized."""

    def __init__(self, spec: ClipSpec = ClipSpec(), device: str = "cpu", seed: int = 0):
        import torch
        import open_clip

        _register_tiny()
        self.spec, self.device = spec, device
        name = resolve_model_name(spec.model)
        if name.startswith("local-dir:") and not Path(name[len("local-dir:"):]).is_dir():
            raise ConfigError(f"{name[len('local-dir:'):]}: no such model directory")
        if not name.startswith(("local-dir:", "hf-hub:")) and name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {spec.model!r} (see open_clip.list_models(), "
                              f"'{TINY}', or a directory written by `fedrec clip train`)")
        if spec.pretrained and not Path(spec.pretrained).is_file() and (
                "/" in spec.pretrained or spec.pretrained.endswith((".pt", ".bin", ".safetensors", ".pth"))):
            raise ConfigError(f"{spec.pretrained}: no such checkpoint file")
        torch.manual_seed(seed)        # random-init models (fedrec-clip-tiny) are reproducible
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=spec.pretrained,
                                                                         device=device)
        except RuntimeError as e:
            raise ConfigError(f"cannot load open_clip {spec.model!r} pretrained={spec.pretrained!r}: "
                              f"{str(e).splitlines()[0][:200]}") from None
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        self.dim = int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                       else model.visual.output_dim)
        self.id = f"open_clip:{spec.model}:{_weights_id(spec)}"

    def encode_text(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """texts (n,) -> (n, D) float32, unit norm."""
        import torch
        from recsys.progress import progress_bar

        out = []
        bs = self.spec.batch_size
        with torch.no_grad():
            for s in progress_bar(range(0, len(texts), bs), desc="text", disable=not progress, unit="batch"):
                tok = self.tokenizer([t if t.strip() else "item" for t in texts[s:s + bs]]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def encode_images(self, paths: list[Path | None], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """paths (n,) -> ((n, D) float32 unit norm, (n,) bool: the image was read). Missing or
        unreadable images get a zero row and False."""
        import torch
        from PIL import Image
        from recsys.progress import progress_bar

        n = len(paths)
        emb = np.zeros((n, self.dim), np.float32)
        ok = np.zeros(n, bool)
        bs = self.spec.batch_size
        with torch.no_grad():
            for s in progress_bar(range(0, n, bs), desc="images", disable=not progress, unit="batch"):
                batch, where = [], []
                for j in range(s, min(n, s + bs)):
                    if paths[j] is None:
                        continue
                    try:
                        with Image.open(paths[j]) as im:
                            batch.append(self.preprocess(im.convert("RGB")))
                        where.append(j)
                    except (OSError, ValueError, SyntaxError):
                        pass                                           # missing/corrupt: text features only
                if batch:
                    x = torch.stack(batch).to(self.device)                              # (b, 3, S, S)
                    e = torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
                    emb[where] = e.cpu().numpy()
                    ok[where] = True
        return emb, ok


class SentenceExtractor:
    """Text-only features from a local sentence-transformers model (default: bundled MiniLM)."""

    def __init__(self, spec: ClipSpec, device: str = "cpu"):
        from retrieval.embedders import SentenceEmbedder

        self.spec = spec
        self.emb = SentenceEmbedder(None if spec.model in ("", "minilm", TINY) else spec.model, device=device)
        self.dim, self.id = self.emb.dim, f"sentence:{self.emb.id}"

    def encode_text(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.emb.encode([t if t.strip() else "item" for t in texts], self.spec.batch_size, progress)

    def encode_images(self, paths, progress=False):
        return np.zeros((len(paths), self.dim), np.float32), np.zeros(len(paths), bool)


def make_extractor(spec: ClipSpec, device: str = "cpu"):
    if spec.fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {spec.fusion!r} (choose from {', '.join(FUSIONS)})")
    if spec.backend == "open_clip":
        return ClipExtractor(spec, device)
    if spec.backend == "sentence":
        return SentenceExtractor(spec, device)
    raise ConfigError(f"unknown feature backend {spec.backend!r} (open_clip or sentence)")


def fuse(text: np.ndarray, image: np.ndarray, has_image: np.ndarray, fusion: str = "mean") -> np.ndarray:
    """(N, D) text, (N, D) image, (N,) bool -> (N, D) unit-norm item vectors (see module docstring)."""
    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    if fusion == "text":
        return unit(text).astype(np.float32)
    if fusion == "image":
        return unit(np.where(has_image[:, None], image, text)).astype(np.float32)
    return unit(np.where(has_image[:, None], (unit(text) + unit(image)) / 2, text)).astype(np.float32)


def whiten(feats: np.ndarray, eps: float) -> np.ndarray:
    """(N, D) item features -> (N, D) float32: unit rows after soft PCA (ZCA) whitening over the
    catalogue (eps > 0), or the features unchanged (eps 0).

    Each eigen-direction of the centred features' covariance is divided by sqrt(lambda + eps *
    lambda_max), so directions the feature model left with little variance (attributes CLIP encodes
    weakly) get about the same scale as dominant ones; eps > 0 keeps pure-noise directions from being
    blown up. Why: the decoder's content projection is a linear map trained by SGD, which learns a
    direction at a speed proportional to its variance; the map's reach (a linear probe) is unchanged.
    ZCA (V diag V^T) is unique, so the result does not depend on the eigensolver's signs."""
    if eps <= 0:
        return np.asarray(feats, np.float32)
    x = np.asarray(feats, np.float64)
    x = x - x.mean(0)                                                             # (N, D) centred
    lam, V = np.linalg.eigh(x.T @ x / max(len(x), 1))                             # (D,), (D, D)
    lam = np.clip(lam, 0.0, None)
    f = x @ (V / np.sqrt(lam + eps * max(lam.max(), 1e-12))) @ V.T                # (N, D)
    return (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def item_texts(items) -> list[str]:
    """The text an item is described by: its text column, else its title (+ categories)."""
    out = []
    for t, title, cats in zip(items["text"].fillna(""), items["title"].fillna(""), items["categories"].fillna("")):
        s = str(t).strip() or " ".join(x for x in (str(title).strip(), str(cats).replace("|", ", ")) if x)
        out.append(s)
    return out


def image_paths(items, base: Path) -> list[Path | None]:
    out = []
    for p in items.get("image_path", [""] * len(items)):
        p = str(p or "").strip()
        out.append(None if not p or p == "nan" else (Path(p) if Path(p).is_absolute() else base / p))
    return out


def catalogue_fingerprint(texts: list[str], paths: list[Path | None]) -> str:
    """sha256 (16 hex) over the item texts and the bytes of every item image (missing ones marked):
    features or a CLIP model built from a catalogue are stale once its texts or images change."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    for p in paths:
        if p is None:
            h.update(b"<none>")
            continue
        try:
            h.update(hashlib.sha256(Path(p).read_bytes()).digest())
        except OSError:
            h.update(b"<missing>")
    return h.hexdigest()[:16]


def _ids_checksum(item_ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, item_ids)).encode()).hexdigest()[:16]


def cache_key(spec: ClipSpec, extractor_id: str) -> str:
    blob = json.dumps({"id": extractor_id, "fusion": spec.fusion, "v": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_features(data, base: Path, spec: ClipSpec = ClipSpec(), device: str = "cpu",
                   cache_root: Path | None = None, progress: bool = True, rebuild: bool = False,
                   extractor=None) -> tuple[np.ndarray, dict]:
    """(N, D) float32 item features for ``data`` (an InteractionData) and the cache manifest.

    base: directory image paths are relative to (the dataset directory). Reuses the cache only when
    its manifest matches model, weights, fusion and item ids; otherwise (re)builds it atomically.
    extractor: an already loaded ``make_extractor(spec, device)`` (callers that also embed queries).
    """
    ext = extractor or make_extractor(spec, device)
    root = Path(cache_root) if cache_root else base / "features"
    key = cache_key(spec, ext.id)
    out = root / key
    ids_sum = _ids_checksum(data.item_ids)
    texts = item_texts(data.items)
    paths = image_paths(data.items, base) if spec.fusion != "text" else [None] * data.n_items
    want = {"extractor": ext.id, "fusion": spec.fusion, "dim": ext.dim, "item_ids_checksum": ids_sum,
            "catalogue_checksum": catalogue_fingerprint(texts, paths), "n_items": int(data.n_items),
            "format": FORMAT_VERSION}
    if out.exists() and not rebuild:
        try:
            feats, man = load_features(out, expect=want)
            log.info("feature cache %s matches (%s); reusing it", out, ext.id)
            return feats, man
        except ManifestError as e:
            log.warning("feature cache %s does not match (%s); rebuilding", out, e)
    import time

    t0 = time.perf_counter()
    text = ext.encode_text(texts, progress)                                             # (N, D)
    img, ok = ext.encode_images(paths, progress)                                        # (N, D), (N,)
    seconds = time.perf_counter() - t0
    wanted_images = sum(p is not None for p in paths)
    missing = int(wanted_images - ok.sum())
    if missing:
        log.warning("%d of %d item images missing or unreadable: those items use text features only",
                    missing, wanted_images)
    feats = fuse(text, img, ok, spec.fusion)
    man = {**want, "spec": asdict(spec), "images_used": int(ok.sum()), "images_missing": missing,
           "seconds": round(seconds, 3), "items_per_s": round(data.n_items / max(seconds, 1e-9), 1)}
    with atomic_dir(out) as tmp:
        save_arrays(tmp / FEATURES_FILE, {"features": feats, "has_image": ok})
        man["checksum"] = sha256_file(tmp / FEATURES_FILE)
        write_json(tmp / MANIFEST_FILE, man)
    log.info("wrote %d x %d item features to %s (%.0f items/s)", *feats.shape, out, man["items_per_s"])
    return feats, man


def load_features(path: Path, expect: dict | None = None) -> tuple[np.ndarray, dict]:
    """Load a feature cache; ManifestError if it is incomplete, corrupt or does not match ``expect``."""
    path = Path(path)
    mp = path / MANIFEST_FILE
    if not mp.exists():
        raise ManifestError(f"{path}: no {MANIFEST_FILE}")
    man = json.loads(mp.read_text())
    for k, v in (expect or {}).items():
        if man.get(k) != v:
            raise ManifestError(f"{path}: {k} is {man.get(k)!r}, expected {v!r}")
    if sha256_file(path / FEATURES_FILE) != man.get("checksum"):
        raise ManifestError(f"{path}: features file checksum differs from its manifest")
    feats = load_arrays(path / FEATURES_FILE)["features"]
    if feats.shape != (man["n_items"], man["dim"]):
        raise ManifestError(f"{path}: features have shape {feats.shape}, manifest says {(man['n_items'], man['dim'])}")
    return feats, man
