"""Task-aware user summaries, generated from a user's own data (on the client, in a deployment).

A summary is a few plain sentences (favourite categories, rating tendencies, typical items, recent
shifts) plus the structured facts the sentences state, so a downstream rule (or an LLM prompt) can
use either. Generators:
  * ``template`` (default): deterministic text from the user's own ratings; no network.
  * ``chat``: an OpenAI-compatible chat endpoint (a local LLM server), prompt from a template file.
Each summary records its generator, generator version and a hash of the history it was made from;
``refresh`` regenerates only the stale ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.errors import FedrecError, ManifestError
from recsys.io import write_text

log = logging.getLogger(__name__)

TEMPLATE_GENERATOR, TEMPLATE_VERSION = "template", 2
SUMMARY_FORMAT = 1


class SummaryError(FedrecError):
    """A summary generator failed (endpoint down, junk reply)."""


@dataclass
class UserHistory:
    """One user's own training data, the only input a summary may use."""
    user: str
    items: np.ndarray          # (L,) item indices
    ratings: np.ndarray        # (L,) ratings (ones for implicit data)
    times: np.ndarray          # (L,) timestamps (0 when unknown)

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.items.astype(np.int64), self.ratings.astype(np.float64), self.times.astype(np.int64)):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:32]


@dataclass
class Summary:
    user: str
    text: str
    facts: dict
    generator: str
    version: int
    source_digest: str


def histories(train: sp.csr_matrix, times: sp.csr_matrix | None, user_ids: np.ndarray) -> list[UserHistory]:
    """Split the training matrix into per-user histories (what each client holds)."""
    train = train.tocsr()
    if times is not None and (times.shape != train.shape or not np.array_equal(times.indptr, train.indptr)
                              or not np.array_equal(times.indices, train.indices)):
        raise ValueError("times must have the same sparsity structure as train (use Split.matrix(..., 'timestamps'))")
    out = []
    for u in range(train.shape[0]):
        a, b = train.indptr[u], train.indptr[u + 1]
        if a == b:
            continue
        t = times.data[a:b].copy() if times is not None else np.zeros(b - a)
        out.append(UserHistory(str(user_ids[u]), train.indices[a:b].copy(), train.data[a:b].copy(), t))
    return out


def _categories(items_table: pd.DataFrame, idx: np.ndarray) -> list[list[str]]:
    cats = items_table["categories"].to_numpy()[idx]
    return [[c for c in str(s).split("|") if c] for s in cats]


def user_facts(h: UserHistory, items_table: pd.DataFrame, top: int = 3) -> dict:
    """The numbers and names a summary states (pure function of the user's history)."""
    r = h.ratings.astype(float)
    explicit = bool((r != 1).any())
    mean = float(r.mean())
    cats = _categories(items_table, h.items)
    count: dict[str, int] = {}
    total: dict[str, float] = {}
    for cs, v in zip(cats, r):
        for c in cs:
            count[c] = count.get(c, 0) + 1
            total[c] = total.get(c, 0.0) + v
    fav = sorted(count, key=lambda c: (-count[c], c))[:top]
    cat_mean = {c: round(float(total[c] / count[c]), 2) for c in count if count[c] >= 2}
    order = np.lexsort((-h.times, -r))                       # best rated first, then most recent
    titles = items_table["title"].to_numpy()
    liked = [str(titles[i]) for i in h.items[order[:top]]]
    facts = {"n": int(len(r)), "mean": round(mean, 2), "explicit": explicit, "favourite_categories": fav,
             "category_mean": cat_mean, "liked": liked}
    if explicit:
        facts["std"] = round(float(r.std()), 2)
        facts["share_high"] = round(float((r >= 4).mean()), 2)
        best = sorted(cat_mean, key=lambda c: (-cat_mean[c], c))[:2]
        worst = sorted(cat_mean, key=lambda c: (cat_mean[c], c))[:1]
        facts["best_categories"], facts["worst_categories"] = best, [c for c in worst if c not in best]
        low = [i for i in order[::-1][:top] if r[i] <= 2]
        facts["disliked"] = [str(titles[h.items[i]]) for i in low]
    # Only the category averages the text states are kept: the facts never say more than the summary.
    common = sorted(cat_mean, key=lambda c: (-count[c], c))[:6]
    stated = set(common) | set(facts.get("best_categories", [])) | set(facts.get("worst_categories", []))
    facts["category_mean"] = {c: cat_mean[c] for c in sorted(stated, key=lambda c: (-count[c], c))} if explicit else {}
    if (h.times > 0).any() and len(r) >= 8:                  # recent shift: last quarter vs the rest
        cut = np.quantile(h.times, 0.75)
        recent = [c for cs, t in zip(cats, h.times) if t > cut for c in cs]
        if recent:
            rc = pd.Series(recent).value_counts()
            top_recent = str(rc.index[0])
            if top_recent not in fav[:1]:
                facts["recent_shift"] = top_recent
    return facts


def render(facts: dict) -> str:
    """Plain sentences from the facts (the ``template`` generator)."""
    s = [f"Rated {facts['n']} items"]
    if facts["explicit"]:
        tend = "generous" if facts["mean"] >= 3.8 else "critical" if facts["mean"] < 3.2 else "balanced"
        s[0] += f", a {tend} rater (mean {facts['mean']:.1f}/5, {facts['share_high']:.0%} rated 4 or 5)."
    else:
        s[0] += "."
    if facts["favourite_categories"]:
        s.append("Mostly watches " + ", ".join(facts["favourite_categories"]) + ".")
    if facts.get("best_categories"):
        parts = [f"{c} ({facts['category_mean'][c]:.1f})" for c in facts["best_categories"]]
        line = "Rates highest: " + ", ".join(parts)
        if facts.get("worst_categories"):
            c = facts["worst_categories"][0]
            line += f"; lowest: {c} ({facts['category_mean'][c]:.1f})"
        s.append(line + ".")
    if facts["explicit"] and facts["category_mean"]:
        s.append("Average rating by category: " + ", ".join(f"{c} {m:.1f}" for c, m in facts["category_mean"].items()) + ".")
    if facts["liked"]:
        s.append("Typical favourites: " + "; ".join(facts["liked"]) + ".")
    if facts.get("disliked"):
        s.append("Disliked: " + "; ".join(facts["disliked"]) + ".")
    if facts.get("recent_shift"):
        s.append(f"Lately more {facts['recent_shift']}.")
    return " ".join(s)


class TemplateGenerator:
    name, version = TEMPLATE_GENERATOR, TEMPLATE_VERSION

    def __init__(self, items_table: pd.DataFrame):
        self.items = items_table

    def generate(self, batch: list[UserHistory]) -> list[Summary]:
        out = []
        for h in batch:
            f = user_facts(h, self.items)
            out.append(Summary(h.user, render(f), f, self.name, self.version, h.digest()))
        return out


@dataclass
class ChatConfig:
    base_url: str                         # e.g. http://127.0.0.1:8000/v1
    model: str
    prompt_template: str                  # text with {facts} and {history} placeholders
    timeout: float = 30.0
    retries: int = 2
    concurrency: int = 4
    api_key: str | None = None
    max_history: int = 30


class ChatGenerator:
    """Summaries from an OpenAI-compatible ``/chat/completions`` endpoint. The template generator's
    facts go into the prompt, so the LLM only rephrases and prioritizes the user's own data."""
    name, version = "chat", 1

    def __init__(self, items_table: pd.DataFrame, cfg: ChatConfig):
        self.items, self.cfg = items_table, cfg
        if "{facts}" not in cfg.prompt_template and "{history}" not in cfg.prompt_template:
            raise SummaryError("prompt template must use {facts} and/or {history}")
        self.name = f"chat:{cfg.model}"

    def _prompt(self, h: UserHistory, facts: dict) -> str:
        titles = self.items["title"].to_numpy()
        lines = [f"- {titles[i]}: {r:g}" for i, r in list(zip(h.items, h.ratings))[-self.cfg.max_history:]]
        return self.cfg.prompt_template.replace("{facts}", json.dumps(facts)).replace("{history}", "\n".join(lines))

    def _call(self, prompt: str) -> str:
        body = json.dumps({"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        last = ""
        for attempt in range(self.cfg.retries + 1):
            try:
                req = urllib.request.Request(url, body, headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                text = reply["choices"][0]["message"]["content"]
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("empty content")
                return text.strip()
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                last = f"endpoint {url} unreachable ({getattr(e, 'reason', e)})"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"endpoint {url} returned an unusable reply ({type(e).__name__}: {e})"
            if attempt < self.cfg.retries:
                time.sleep(min(2.0, 0.2 * 2 ** attempt))
        raise SummaryError(last + f" after {self.cfg.retries + 1} attempt(s)")

    def generate(self, batch: list[UserHistory]) -> list[Summary]:
        facts = [user_facts(h, self.items) for h in batch]
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            texts = list(pool.map(self._call, [self._prompt(h, f) for h, f in zip(batch, facts)]))
        return [Summary(h.user, t, f, self.name, self.version, h.digest()) for h, t, f in zip(batch, texts, facts)]


# -- storage ------------------------------------------------------------------------------------

@dataclass
class SummaryStore:
    """All summaries of one dataset, one JSON object per line, written atomically as a whole."""
    entries: dict[str, Summary] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        head = {"format": SUMMARY_FORMAT, **self.meta}
        lines = [json.dumps(head)] + [json.dumps(asdict(s), sort_keys=True) for s in self.entries.values()]
        write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SummaryStore":
        path = Path(path)
        if not path.exists():
            raise ManifestError(f"{path}: no such summaries file")
        try:
            rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ManifestError(f"{path}: corrupt summaries file (a line is not valid JSON)") from None
        if not rows or rows[0].get("format") != SUMMARY_FORMAT:
            raise ManifestError(f"{path}: not a fedrec summaries file (format {SUMMARY_FORMAT} expected)")
        head = rows[0]
        head.pop("format")
        try:
            entries = {r["user"]: Summary(**r) for r in rows[1:]}
        except TypeError:
            raise ManifestError(f"{path}: corrupt summaries file (an entry has unexpected fields)") from None
        return cls(entries, head)


def refresh(store: SummaryStore, hist: list[UserHistory], generator, batch: int = 64,
            progress: bool = False) -> tuple[SummaryStore, int]:
    """New store where summaries whose source history, generator or version changed are regenerated
    (the others are kept). Returns (store, number regenerated). Raises SummaryError on failure, in
    which case the caller's store is unchanged."""
    stale = [h for h in hist if (s := store.entries.get(h.user)) is None or s.source_digest != h.digest()
             or s.generator != generator.name or s.version != generator.version]
    keep = {h.user for h in hist}
    entries = {u: s for u, s in store.entries.items() if u in keep}
    it = range(0, len(stale), batch)
    if progress:
        from recsys.progress import progress_bar
        it = progress_bar(it, desc="summaries", unit="batch")
    for s in it:
        for summ in generator.generate(stale[s:s + batch]):
            entries[summ.user] = summ
    order = {h.user: k for k, h in enumerate(hist)}
    entries = dict(sorted(entries.items(), key=lambda kv: order[kv[0]]))
    return SummaryStore(entries, dict(store.meta)), len(stale)
