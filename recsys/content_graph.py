"""Propagate item content over an item–item graph with torch_geometric before the projection.

Graphs (edge_index (2, E) int64 over item indices, edge_weight (E,)):
    co_interaction: items co-occurring in training histories, top-k neighbours per item by
        co-count, symmetrized. Built from the training matrix — in a real deployment the server does
        not have it, so it is a simulation-only option unless the counts come from a private
        aggregate; items without training interactions (cold items) have no edges.
    kg: items linked through shared knowledge-graph entities (ml-100k.kg + ml-100k.link: same
        director, actor, genre entity, ...). Public catalogue data: fine to use anywhere, and cold
        items have edges too.
The GNN is parameter-free (LightGCN-style: ``torch_geometric.nn.LGConv`` layers, symmetric
normalization, mean over layers 0..L), so the only learned content weights remain the federated
projection and nothing new has to be federated.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recsys.errors import DataError

log = logging.getLogger(__name__)
GRAPHS = ("none", "co_interaction", "kg")


def _top_k_edges(S: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest off-diagonal entries of each row of a square sparse S, symmetrize, and
    return (edge_index (2, E), weight (E,))."""
    S = S.tocsr().astype(np.float64)
    S.setdiag(0)
    S.eliminate_zeros()
    rows, cols, vals = [], [], []
    for i in range(S.shape[0]):
        a, b = S.indptr[i], S.indptr[i + 1]
        if a == b:
            continue
        idx, v = S.indices[a:b], S.data[a:b]
        top = np.argsort(-v, kind="stable")[:k]
        rows.append(np.full(len(top), i)), cols.append(idx[top]), vals.append(v[top])
    if not rows:
        return np.zeros((2, 0), np.int64), np.zeros(0)
    K = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=S.shape)
    K = K.maximum(K.T).tocoo()                                           # symmetric: i~j if either keeps it
    return np.vstack([K.row, K.col]).astype(np.int64), K.data


def co_interaction_graph(train: sp.csr_matrix, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """train (U, N) -> item–item edges weighted by log(1 + co-count)."""
    X = (train != 0).astype(np.float32).tocsr()
    S = (X.T @ X).tocsr()                                                # (N, N) co-counts
    S.data = np.log1p(S.data)
    return _top_k_edges(S, k)


def kg_graph(dataset_dir: Path, data, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Items sharing knowledge-graph entities (RecBole NAME.kg + NAME.link) -> item–item edges weighted
    by the number of shared entities (rare entities count more: idf weighting)."""
    d = Path(dataset_dir)
    kg, link = d / f"{d.name}.kg", d / f"{d.name}.link"
    if not kg.exists() or not link.exists():
        raise DataError(f"{d}: graph 'kg' needs {kg.name} and {link.name} (RecBole knowledge-graph files)")
    lk = pd.read_csv(link, sep="\t", dtype=str)
    kgdf = pd.read_csv(kg, sep="\t", dtype=str)
    lk.columns = [c.split(":")[0] for c in lk.columns]
    kgdf.columns = [c.split(":")[0] for c in kgdf.columns]
    index = {str(x): i for i, x in enumerate(data.item_ids)}
    lk = lk[lk["item_id"].isin(index)]
    ent_item = dict(zip(lk["entity_id"], lk["item_id"].map(index)))
    # An item's neighbours in the KG (both directions), as entity tokens.
    h_items = kgdf["head_id"].map(ent_item)
    t_items = kgdf["tail_id"].map(ent_item)
    pairs = pd.concat([pd.DataFrame({"item": h_items, "ent": kgdf["tail_id"]}),
                       pd.DataFrame({"item": t_items, "ent": kgdf["head_id"]})]).dropna().drop_duplicates()
    ents = {e: j for j, e in enumerate(pairs["ent"].unique())}
    A = sp.csr_matrix((np.ones(len(pairs)), (pairs["item"].astype(np.int64), pairs["ent"].map(ents))),
                      shape=(data.n_items, len(ents)))
    df = np.asarray(A.sum(0)).ravel()
    A = A @ sp.diags(np.log((1 + data.n_items) / (1 + df)))          # idf: a shared rare entity says more
    return _top_k_edges((A @ A.T).tocsr(), k)


def propagate(x: np.ndarray, edge_index: np.ndarray, edge_weight: np.ndarray, layers: int = 2) -> np.ndarray:
    """x (N, F) -> (N, F): mean of [x, Âx, Â²x, ...] with Â the symmetric-normalized weighted adjacency
    (torch_geometric LGConv), rows L2-normalized again. Isolated items keep their own content."""
    from torch_geometric.nn import LGConv

    X = torch.as_tensor(x, dtype=torch.float32)
    ei = torch.as_tensor(edge_index, dtype=torch.long)
    ew = torch.as_tensor(edge_weight, dtype=torch.float32)
    conv = LGConv(normalize=True)
    outs, h = [X], X
    with torch.no_grad():
        for _ in range(layers):
            h = conv(h, ei, ew)
            outs.append(h)
    out = torch.stack(outs).mean(0)
    deg = torch.zeros(len(X)).index_add_(0, ei[0], torch.ones(ei.shape[1])) if ei.numel() else torch.zeros(len(X))
    out[deg == 0] = X[deg == 0]                                           # no neighbours: content as is
    return torch.nn.functional.normalize(out, dim=1).numpy()


def build_graph(kind: str, train: sp.csr_matrix, data, dataset_dir: Path, k: int = 20):
    if kind == "co_interaction":
        return co_interaction_graph(train, k)
    if kind == "kg":
        return kg_graph(dataset_dir, data, k)
    raise ValueError(f"unknown graph {kind!r} (choose from {', '.join(GRAPHS)})")
