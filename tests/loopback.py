"""A loopback transport for the deployment's server and nodes (no network), shared by the deployment
tests and the strategy conformance suite."""
from __future__ import annotations

import numpy as np

from federation.deploy.flower_app import decode_train_reply, train_reply_content
from federation.deploy.node import ClientNode, partition_users
from federation.runs.jobs import prepare_data
from recsys.synth import SynthSpec, write_catalogue


def synth_catalogue(tmp_path):
    """A small synthetic catalogue (90 users, 40 items, no images)."""
    d = tmp_path / "synth"
    if not d.exists():
        write_catalogue(SynthSpec(n_users=90, n_items=40, mean_activity=10, seed=3), d, images=False, progress=False)
    return d


def nodes_for(cfg, tmp_path, parts=3):
    """``parts`` ClientNodes splitting the users of ``cfg``'s data: ({node id: node}, data, split)."""
    data, split = prepare_data(cfg)
    return {100 + p: ClientNode(cfg, partition_users(data.n_users, p, parts), tmp_path / f"node{p}", data, split)
            for p in range(parts)}, data, split


class Loopback:
    """federation.deploy.server.Transport calling ClientNode objects directly. ``down`` nodes stay connected
    but never answer train or evaluate (a dead ClientApp); ``poison`` nodes send infinite rows."""

    def __init__(self, nodes: dict[int, ClientNode]):
        self.nodes, self.down, self.sent = nodes, set(), []
        self.poison: set[int] = set()
        self.proto_sent: list[tuple[int, dict]] = []      # every prototype-round reply a node sent
        self.hellos: list[tuple[int, dict]] = []          # every hello a node sent
        self.received: list[tuple[int, str, object]] = []  # (node, train|evaluate, holder counts sent to it)
        self.personal: list[dict] = []      # per train message: that node's personal state before and after it
        self.decoders: list[dict] = []      # per train message: the decoder the node received for it

    @staticmethod
    def _personal(node: ClientNode) -> dict[str, np.ndarray]:
        return {k: node.fed.store.full(k).float().numpy().copy() for k in node.fed.store.keys}

    def node_ids(self):
        return sorted(self.nodes)

    def hello(self, nodes):
        out = {n: self.nodes[n].hello() for n in nodes}
        self.hellos += list(out.items())
        return out

    def train(self, requests):
        out = {}
        for n, r in requests.items():
            if n in self.down:
                out[n] = TimeoutError("no reply")
                continue
            self.received.append((n, "train", r.holders))
            before = self._personal(self.nodes[n])
            rep = self.nodes[n].train(r.round, r.lr, r.users, r.decoder, r.dp_clip, r.holders, r.secagg, r.starts)
            content = train_reply_content(rep)                      # exactly what would go on the wire
            self.sent.append((n, content))
            self.personal.append({"before": before, "after": self._personal(self.nodes[n])})
            self.decoders.append(r.decoder)
            rep = decode_train_reply(content)
            if n in self.poison:
                for m in rep.updates.values():
                    m["dec_out"] = m["dec_out"] * np.float32(np.inf)
            out[n] = rep
        return out

    def evaluate(self, nodes, decoder, part, holders=None, prototypes=None):
        self.received += [(n, "evaluate", holders) for n in nodes]
        return {n: self.nodes[n].evaluate(decoder, part, holders=holders, prototypes=prototypes)
                for n in nodes if n not in self.down}

    def prototypes(self, nodes, decoder, centroids, holders=None, secagg=None):
        from federation.deploy.flower_app import _arrays, _numpy

        out = {}
        for n in nodes:
            if n in self.down:
                out[n] = TimeoutError("no reply")
                continue
            stats = self.nodes[n].prototype_stats(decoder, centroids, holders, secagg)
            self.proto_sent.append((n, stats))
            out[n] = _numpy(_arrays(stats))                       # through a Flower ArrayRecord and back
        return out


