"""Seeded synthetic multimodal catalogue with known ground truth.

Items have visual and textual attributes (category, colour, shape, pattern, style); each gets a
small PNG that shows all five — the shape in its colour and pattern, a pictogram of the category and
a style-specific background — and a text description naming them. Item latent vectors are a fixed function of the attributes plus a little noise, so content
predicts preference. Users come from non-IID taste groups (a group centre + personal noise), have
power-law activity, and pick items by a mix of long-tail popularity and their own taste; explicit
ratings come from a biased dot-product model plus Gaussian noise. Everything is written as RecBole
atomic files plus ``ground_truth.safetensors`` so tests can check that models recover it.
"""
from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.io import atomic_path, save_arrays, write_json

log = logging.getLogger(__name__)

ATTRIBUTES = {
    "category": ["bag", "shoe", "lamp", "mug", "poster", "scarf", "clock", "vase"],
    "colour": ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"],
    "shape": ["circle", "square", "triangle", "diamond"],
    "pattern": ["plain", "striped", "dotted", "checked"],
    "style": ["modern", "vintage", "minimal", "playful"],
}
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
       "purple": (140, 60, 180), "orange": (245, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245)}


@dataclass(frozen=True)
class SynthSpec:
    n_users: int = 2000
    n_items: int = 500
    n_groups: int = 8
    dim: int = 16
    mean_activity: float = 30.0
    min_activity: int = 5
    max_activity: int = 300
    popularity_exponent: float = 1.0     # Zipf exponent of item popularity
    taste_share: float = 0.7             # share of interactions chosen by taste (rest by popularity)
    taste_temperature: float = 1.5
    noise: float = 0.4                   # rating noise (std, in stars)
    seed: int = 0


def taste_probs(item_vec: np.ndarray, centre: np.ndarray, temperature: float) -> np.ndarray:
    """(I,) softmax of item_vec (I, d) . centre (d,) / temperature: the content part of a group's choice."""
    logits = item_vec @ centre / temperature                                                     # (I,)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def choice_probs(item_vec: np.ndarray, centre: np.ndarray, pop: np.ndarray, spec: SynthSpec) -> np.ndarray:
    """(I,) probability that a member of the taste group with centre (d,) picks each item: a
    ``taste_share`` mix of taste (content, damped by pop**0.3) and raw popularity pop (I,)."""
    logits = item_vec @ centre / spec.taste_temperature
    taste = np.exp(logits - logits.max()) * pop ** 0.3
    return spec.taste_share * taste / taste.sum() + (1 - spec.taste_share) * pop


def generate(spec: SynthSpec) -> dict:
    """Return interactions, item table and ground truth as numpy arrays / DataFrames (no I/O)."""
    rng = np.random.default_rng(spec.seed)
    I, U, d = spec.n_items, spec.n_users, spec.dim
    attrs = {k: rng.integers(0, len(v), I) for k, v in ATTRIBUTES.items()}
    # Item latent = sum of one embedding per attribute value (+ noise): content determines taste.
    emb = {k: rng.normal(0, 1 / np.sqrt(len(ATTRIBUTES)), (len(v), d)) for k, v in ATTRIBUTES.items()}
    item_vec = sum(emb[k][attrs[k]] for k in ATTRIBUTES) + rng.normal(0, 0.15, (I, d))        # (I, d)
    item_bias = rng.normal(0, 0.3, I)
    pop = 1.0 / np.arange(1, I + 1) ** spec.popularity_exponent
    pop = pop[rng.permutation(I)]
    pop /= pop.sum()
    centres = rng.normal(0, 1, (spec.n_groups, d))
    group = rng.integers(0, spec.n_groups, U)
    user_vec = centres[group] + rng.normal(0, 0.35, (U, d))                                     # (U, d)
    user_bias = rng.normal(0, 0.25, U)
    # Power-law activity (Pareto), clipped.
    act = (rng.pareto(1.5, U) + 1) * spec.mean_activity / 3
    act = np.clip(act.astype(np.int64), spec.min_activity, min(spec.max_activity, I))
    users_out, items_out = [], []
    for g in range(spec.n_groups):
        members = np.flatnonzero(group == g)
        if not len(members):
            continue
        mix = choice_probs(item_vec, centres[g], pop, spec)
        n = act[members]
        draws = rng.choice(I, size=int(n.sum() * 1.3) + 10, p=mix)      # oversample: duplicates dropped
        owner = np.repeat(members, np.ceil(n * 1.3).astype(np.int64))[: len(draws)]
        draws = draws[: len(owner)]
        df = pd.DataFrame({"u": owner, "i": draws}).drop_duplicates()
        df["k"] = df.groupby("u").cumcount()
        df = df[df["k"] < act[df["u"].to_numpy()]]
        users_out.append(df["u"].to_numpy())
        items_out.append(df["i"].to_numpy())
    u = np.concatenate(users_out)
    i = np.concatenate(items_out)
    affinity = (user_vec[u] * item_vec[i]).sum(1)
    raw = 3.4 + user_bias[u] + item_bias[i] + 0.8 * affinity + rng.normal(0, spec.noise, len(u))
    rating = np.clip(np.rint(raw), 1, 5).astype(np.float32)
    ts = rng.integers(1_600_000_000, 1_700_000_000, len(u))
    names = {k: np.array(v)[attrs[k]] for k, v in ATTRIBUTES.items()}
    title = [f"{s.capitalize()} {c} {p} {cat}" for s, c, p, cat in
             zip(names["style"], names["colour"], names["pattern"], names["category"])]
    text = [f"A {s} {cat} in {c}, with a {p} {sh} design." for s, cat, c, p, sh in
            zip(names["style"], names["category"], names["colour"], names["pattern"], names["shape"])]
    items = pd.DataFrame({"item_id": np.arange(I).astype(str), "title": title, "text": text,
                          "categories": names["category"], **{k: names[k] for k in ATTRIBUTES}})
    truth = {"user_vec": user_vec.astype(np.float32), "item_vec": item_vec.astype(np.float32),
             "user_bias": user_bias.astype(np.float32), "item_bias": item_bias.astype(np.float32),
             "group": group.astype(np.int64), "popularity": pop.astype(np.float64),
             **{f"attr_{k}": v.astype(np.int64) for k, v in attrs.items()}}
    inter = pd.DataFrame({"user_id": u.astype(str), "item_id": i.astype(str), "rating": rating, "timestamp": ts})
    return {"inter": inter, "items": items, "truth": truth}


# Bump when the drawing changes: write_catalogue re-renders images made by another version (and the
# catalogue fingerprint in feature caches / CLIP reports changes with the image bytes).
RENDER_VERSION = 2
# Style -> background: what a shopper would see as the look of the product shot.
STYLE_BG = {"modern": (205, 215, 230), "vintage": (225, 200, 160), "minimal": (250, 250, 250),
            "playful": (255, 205, 230)}


def _draw_category(dr, category: str, x0: int, y0: int, s: int, ink) -> None:
    """A pictogram of the category in the s x s box at (x0, y0)."""
    x1, y1, mx, my = x0 + s, y0 + s, x0 + s // 2, y0 + s // 2
    w = max(1, s // 8)
    if category == "bag":          # body + handle
        dr.rectangle((x0, y0 + s // 3, x1, y1), fill=ink)
        dr.arc((x0 + s // 4, y0, x1 - s // 4, y0 + 2 * s // 3), 180, 360, fill=ink, width=w)
    elif category == "shoe":       # L-shaped boot
        dr.polygon([(x0, y0), (x0 + s // 3, y0), (x0 + s // 3, my), (x1, my + s // 6), (x1, y1), (x0, y1)], fill=ink)
    elif category == "lamp":       # shade on a stand
        dr.polygon([(x0 + s // 4, y0), (x1 - s // 4, y0), (x1, my), (x0, my)], fill=ink)
        dr.line([(mx, my), (mx, y1)], fill=ink, width=w)
        dr.line([(x0 + s // 4, y1), (x1 - s // 4, y1)], fill=ink, width=w)
    elif category == "mug":        # cup + side handle
        dr.rectangle((x0, y0 + s // 6, x1 - s // 3, y1), fill=ink)
        dr.arc((x1 - s // 2, my - s // 4, x1, my + s // 4), 270, 90, fill=ink, width=w)
    elif category == "poster":     # frame with a pin
        dr.rectangle((x0, y0 + s // 6, x1, y1), outline=ink, width=w)
        dr.ellipse((mx - w, y0, mx + w, y0 + 2 * w), fill=ink)
    elif category == "scarf":      # zigzag
        pts = [(x0 + k * s // 4, y0 + (s // 4 if k % 2 else 3 * s // 4)) for k in range(5)]
        dr.line(pts, fill=ink, width=2 * w)
    elif category == "clock":      # dial + hands
        dr.ellipse((x0, y0, x1, y1), outline=ink, width=w)
        dr.line([(mx, my), (mx, y0 + s // 5)], fill=ink, width=w)
        dr.line([(mx, my), (x1 - s // 4, my)], fill=ink, width=w)
    else:                          # vase: narrow neck, round body
        dr.rectangle((mx - s // 8, y0, mx + s // 8, y0 + s // 3), fill=ink)
        dr.ellipse((x0 + s // 8, y0 + s // 4, x1 - s // 8, y1), fill=ink)


def render_item_image(colour: str, shape: str, pattern: str, category: str = "bag", style: str = "minimal",
                      size: int = 64):
    """A small PIL image of the item: its shape in its colour and pattern on a background that shows
    its style, and a pictogram of its category in the lower right corner."""
    from PIL import Image, ImageDraw

    bg = STYLE_BG.get(style, (250, 250, 250))
    if colour == "white" and sum(bg) > 690:
        bg = (90, 90, 90)            # keep a white item visible
    img = Image.new("RGB", (size, size), bg)
    dr = ImageDraw.Draw(img)
    if style == "vintage":           # a thin double frame
        dr.rectangle((1, 1, size - 2, size - 2), outline=(120, 90, 50), width=1)
    elif style == "playful":         # confetti
        for k in range(6):
            x, y = (k * 23 + 5) % (size - 4), (k * 37 + 3) % (size - 4)
            dr.ellipse((x, y, x + 3, y + 3), fill=(60, 160, 230) if k % 2 else (250, 170, 40))
    fill = RGB[colour]
    m = size // 10
    e = size - size // 3             # the main shape sits top-left; the pictogram bottom-right
    box = (m, m, e, e)
    if shape == "circle":
        dr.ellipse(box, fill=fill)
    elif shape == "square":
        dr.rectangle(box, fill=fill)
    elif shape == "triangle":
        dr.polygon([((m + e) // 2, m), (e, e), (m, e)], fill=fill)
    else:
        dr.polygon([((m + e) // 2, m), (e, (m + e) // 2), ((m + e) // 2, e), (m, (m + e) // 2)], fill=fill)
    ink = (255, 255, 255) if colour in ("black", "blue", "purple") else (0, 0, 0)
    if pattern == "striped":
        for y in range(m, e, 5):
            dr.line([(m, y), (e, y)], fill=ink, width=1)
    elif pattern == "dotted":
        for y in range(m + 3, e, 7):
            for x in range(m + 3, e, 7):
                dr.ellipse((x - 1, y - 1, x + 1, y + 1), fill=ink)
    elif pattern == "checked":
        for y in range(m, e, 6):
            for x in range(m + ((y // 6) % 2) * 6, e, 12):
                dr.rectangle((x, y, x + 2, y + 2), fill=ink)
    s = size // 4
    _draw_category(dr, category, size - s - 3, size - s - 3, s, (40, 40, 40) if sum(bg) > 300 else (235, 235, 235))
    return img


def _render_chunk(args) -> int:
    out_dir, rows = args
    for item_id, colour, shape, pattern, category, style in rows:
        path = Path(out_dir) / f"{item_id}.png"
        with atomic_path(path) as tmp:
            render_item_image(colour, shape, pattern, category, style).save(tmp, format="PNG", optimize=True)
    return len(rows)


def _read_manifest(out: Path) -> dict:
    import json

    try:
        return json.loads((out / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        return {}


def catalogue_is_current(out: str | Path, spec: SynthSpec, images: bool = True) -> bool:
    """Whether ``out`` holds a finished catalogue written for ``spec`` by this generator version."""
    m = _read_manifest(Path(out))
    return m.get("spec") == spec.__dict__ and m.get("images") == images and (
        not images or m.get("render_version") == RENDER_VERSION)


def write_catalogue(spec: SynthSpec, out: str | Path, images: bool = True, workers: int = 2,
                    progress: bool = True) -> Path:
    """Generate and write: NAME.inter, NAME.item, ground_truth.safetensors, images/, MANIFEST.json."""
    from recsys.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = out.name
    prev = _read_manifest(out)
    # Drop the manifest first: if this run dies half-way, the next one sees no finished catalogue.
    (out / "MANIFEST.json").unlink(missing_ok=True)
    g = generate(spec)
    items = g["items"].copy()
    items["image_path"] = [f"images/{i}.png" for i in items["item_id"]] if images else ""
    header_i = {"item_id": "item_id:token", "title": "title:token_seq", "text": "text:token_seq",
                "categories": "categories:token", **{k: f"{k}:token" for k in ATTRIBUTES},
                "image_path": "image_path:token"}
    with atomic_path(out / f"{name}.item") as tmp:
        items[list(header_i)].rename(columns=header_i).to_csv(tmp, sep="\t", index=False)
    header = {"user_id": "user_id:token", "item_id": "item_id:token", "rating": "rating:float",
              "timestamp": "timestamp:float"}
    with atomic_path(out / f"{name}.inter") as tmp:
        g["inter"].rename(columns=header).to_csv(tmp, sep="\t", index=False)
    save_arrays(out / "ground_truth.safetensors", g["truth"])
    if images:
        img_dir = out / "images"
        img_dir.mkdir(exist_ok=True)
        rows = list(zip(items["item_id"], items["colour"], items["shape"], items["pattern"], items["category"],
                        items["style"]))
        # Existing images are kept only when the previous run drew them with this renderer and spec.
        same = prev.get("render_version") == RENDER_VERSION and prev.get("spec") == spec.__dict__
        todo = [r for r in rows if not (same and (img_dir / f"{r[0]}.png").exists())]
        chunks = [(str(img_dir), todo[s:s + 500]) for s in range(0, len(todo), 500)]
        with progress_bar(total=len(todo), desc="images", unit="img", disable=not progress) as bar:
            if workers > 1 and len(chunks) > 1:
                with ProcessPoolExecutor(workers) as ex:
                    for n in ex.map(_render_chunk, chunks):
                        bar.update(n)
            else:
                for c in chunks:
                    bar.update(_render_chunk(c))
    write_json(out / "MANIFEST.json", {"generator": "fedrec.synth", "spec": spec.__dict__,
                                        "users": spec.n_users, "items": spec.n_items,
                                        "interactions": int(len(g["inter"])), "images": images,
                                        "render_version": RENDER_VERSION if images else None})
    log.info("wrote %d interactions for %d users x %d items to %s", len(g["inter"]), spec.n_users,
             spec.n_items, out)
    return out
