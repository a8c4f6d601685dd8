"""Summary-augmented retrieval at query time.

For a user and a task input (a search query, a candidate item, a rating question) the context is
the user's summary plus the top-k entries of *that user's own* history most similar to the input
(the FAISS search is restricted to the user's id range). Ranking, explanations and the dashboard
read the same ``Context``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrieval.build import history_texts, split_history_id, user_id_range
from retrieval.index import VectorIndex
from retrieval.summaries import Summary


@dataclass
class Entry:
    item: int             # item index
    title: str
    rating: float
    similarity: float
    text: str


@dataclass
class Context:
    user: int
    summary: Summary | None
    entries: list[Entry] = field(default_factory=list)

    def as_text(self, with_summary: bool = True) -> str:
        """What a prompt (or a person) would be shown."""
        parts = [f"User summary: {self.summary.text}"] if with_summary and self.summary else []
        parts += [f"- {e.text}" for e in self.entries]
        return "\n".join(parts)

    def n_tokens(self, with_summary: bool = True) -> int:
        return len(self.as_text(with_summary).split())


class Retriever:
    """Reads a histories index and (optionally) the summaries of a run's dataset."""

    def __init__(self, data, train, histories: VectorIndex, embedder, summaries: dict[str, Summary] | None = None,
                 explicit: bool = True):
        self.data, self.train, self.ix, self.embedder = data, train.tocsr(), histories, embedder
        self.summaries, self.explicit = summaries or {}, explicit

    def context(self, user: int, query_vec: np.ndarray, k: int = 4) -> Context:
        """user: row index; query_vec (d,) embedding of the task input."""
        summ = self.summaries.get(str(self.data.user_ids[user]))
        if k <= 0:
            return Context(user, summ)
        res = self.ix.search(query_vec[None, :], k, id_range=user_id_range(user))
        ids, sims = res.ids[0], res.scores[0]
        keep = ids >= 0
        users, items = split_history_id(ids[keep])
        row = self.train[user]
        ratings = np.asarray(row[0, items].todense()).ravel() if len(items) else np.zeros(0)
        texts = history_texts(self.data, users, items, ratings, self.explicit)
        entries = [Entry(int(i), self.data.title(int(i)), float(r), float(s), t)
                   for i, r, s, t in zip(items, ratings, sims[keep], texts)]
        return Context(user, summ, entries)

    def context_for_text(self, user: int, text: str, k: int = 4) -> Context:
        return self.context(user, self.embedder.encode([text])[0], k)
