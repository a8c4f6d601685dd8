"""Contrastive training of a CLIP model on a catalogue's own image–text pairs (``fedrec clip train``).

Why: this environment cannot download CLIP weights, and a domain-tuned model is useful anyway. The
loss is open_clip's ``ClipLoss`` (symmetric InfoNCE with a learned temperature). Training starts
from random init for a registered config (default ``fedrec-clip-tiny``) or from given pretrained
weights (tag or local checkpoint). The output directory holds ``open_clip_config.json`` and
``open_clip_model.safetensors`` — open_clip's own ``local-dir:`` layout — so the feature extractor
(and plain open_clip) loads it like any local model. Held-out items (never trained on) measure
text→image recall@1/@10 against chance.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recsys.errors import ConfigError
from recsys.io import atomic_dir, library_versions, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipTrainSpec:
    model: str = "fedrec-clip-tiny"
    pretrained: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0      # max global grad norm; contrastive training on a few items collapses without it
    holdout: float = 0.1
    seed: int = 0
    max_items: int | None = None       # train on a seeded subset of items (None: all with images)


def recall_at(sim: np.ndarray, ks=(1, 10)) -> dict[str, float]:
    """sim (Q, Q): query i's true match is column i. Recall@k = share of queries ranking it in the top k."""
    true = np.diag(sim)[:, None]
    rank = (sim > true).sum(1)                                   # strictly better candidates
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def model_is_current(data, base: Path, out: Path, spec: ClipTrainSpec) -> bool:
    """Whether ``out`` holds a model trained with ``spec`` on exactly this catalogue (texts + images)."""
    import json

    from recsys.features import catalogue_fingerprint, image_paths, item_texts

    try:
        rep = json.loads((Path(out) / "REPORT.json").read_text())
    except (OSError, ValueError):
        return False
    return (rep.get("spec") == json.loads(json.dumps(asdict(spec))) and (Path(out) / "open_clip_model.safetensors").exists()
            and rep.get("catalogue_checksum") == catalogue_fingerprint(item_texts(data.items), image_paths(data.items, base)))


def train_clip(data, base: Path, out: Path, spec: ClipTrainSpec = ClipTrainSpec(), device: str = "cpu",
               progress: bool = True) -> dict:
    """Train on the items of ``data`` that have a readable image; write the model dir ``out``
    atomically; return the report (per-epoch loss and seconds, held-out recall, chance)."""
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from recsys.features import _register_tiny, catalogue_fingerprint, image_paths, item_texts, resolve_model_name
    from recsys.progress import progress_bar

    _register_tiny()
    name = resolve_model_name(spec.model)
    if not name.startswith("local-dir:") and name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {spec.model!r}")
    torch.manual_seed(spec.seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=spec.pretrained, device=device,
                                                                     output_dict=True)
    except RuntimeError as e:
        raise ConfigError(f"cannot load open_clip {spec.model!r}: {str(e).splitlines()[0][:200]}") from None
    tokenizer = open_clip.get_tokenizer(name)
    texts = item_texts(data.items)
    paths = image_paths(data.items, base)
    imgs, keep = [], []
    for i, p in enumerate(paths):
        if p is None:
            continue
        try:
            with Image.open(p) as im:
                imgs.append(preprocess(im.convert("RGB")))
            keep.append(i)
        except (OSError, ValueError, SyntaxError):
            pass
    missing = sum(p is not None for p in paths) - len(keep)
    if len(keep) < 20:
        raise ConfigError(f"{data.name}: only {len(keep)} items have readable images; need at least 20 to train CLIP")
    if missing:
        log.warning("%d item images missing or unreadable: skipped", missing)
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(keep))
    if spec.max_items:
        order = order[: spec.max_items]
    n_hold = max(10, int(round(spec.holdout * len(order))))
    hold, train = order[:n_hold], order[n_hold:]
    X = torch.stack(imgs)                                                      # (M, 3, S, S)
    T = tokenizer([texts[keep[j]] for j in range(len(keep))])                 # (M, L)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr,
                            weight_decay=spec.weight_decay)
    steps = spec.epochs * max(1, int(np.ceil(len(train) / spec.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    history = []
    g = torch.Generator().manual_seed(spec.seed)
    for ep in range(spec.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.as_tensor(train)[torch.randperm(len(train), generator=g)]
        tot, nb = 0.0, 0
        for s in progress_bar(range(0, len(perm), spec.batch_size), desc=f"clip epoch {ep + 1}/{spec.epochs}",
                              disable=not progress, leave=False):
            b = perm[s:s + spec.batch_size]
            if len(b) < 2:
                continue
            out_ = model(X[b].to(device), T[b].to(device))
            loss = loss_fn(out_["image_features"], out_["text_features"], out_["logit_scale"])
            opt.zero_grad()
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))       # CLIP's cap on the temperature
            tot, nb = tot + float(loss.detach()), nb + 1
        history.append({"epoch": ep + 1, "loss": tot / max(nb, 1), "seconds": round(time.perf_counter() - t0, 3)})
        log.info("clip epoch %d: loss %.4f (%.1f s)", ep + 1, history[-1]["loss"], history[-1]["seconds"])
    model.eval()
    with torch.no_grad():
        hi = torch.as_tensor(hold)
        ie = torch.nn.functional.normalize(model.encode_image(X[hi].to(device)).float(), dim=-1)
        te = torch.nn.functional.normalize(model.encode_text(T[hi].to(device)).float(), dim=-1)
        sim = (te @ ie.T).cpu().numpy()                                        # text queries x images
    rec = recall_at(sim)
    report = {"spec": asdict(spec), "catalogue_checksum": catalogue_fingerprint(texts, paths),
              "items_trained": int(len(train)), "items_held_out": int(len(hold)),
              "images_missing": int(missing), "epochs": history, "text_to_image": rec,
              "chance": {"recall@1": 1 / len(hold), "recall@10": min(1.0, 10 / len(hold))},
              "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else 0.0,
              "versions": library_versions()}
    import open_clip.factory as factory

    cfg = factory.get_model_config(name)
    pre = {"size": getattr(model.visual, "image_size", None), "mean": list(preprocess.transforms[-1].mean),
           "std": list(preprocess.transforms[-1].std)}
    with atomic_dir(out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "open_clip_model.safetensors"))
        write_json(tmp / "open_clip_config.json", {"model_cfg": cfg, "preprocess_cfg": {
            k: v for k, v in pre.items() if v is not None}})
        write_json(tmp / "REPORT.json", report)
    log.info("text->image on %d held-out items: recall@1 %.3f recall@10 %.3f (chance %.3f / %.3f)",
             len(hold), rec["recall@1"], rec["recall@10"], report["chance"]["recall@1"], report["chance"]["recall@10"])
    return report
