"""The conformance suite every strategy's test class inherits (``class TestX(StrategyConformance)``).

What it proves for a strategy, on small data:
  * the one-client reference, the generic vectorized path and the fast path (where the strategy has
    one) train to the same state: 1e-10 in float64, 1e-5 in float32, explicit and implicit;
  * no personal parameter appears in any message (keys) and no message value equals a personal
    value (not even scaled);
  * the counted bytes equal the message's serialized size;
  * a run resumed from saved state equals the uninterrupted run bit for bit;
  * the deployed run (server + nodes over a loopback that encodes every reply as on the wire)
    equals the in-process run at 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from federation.simulation import Federation, FedSettings
from federation.strategies.comm import client_bytes
from federation.strategies.messages import expand_update
from federation.strategies.registry import get_strategy
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape
from recsys.splits import ratio_split


def _fed(data, strategy, options, mode, dtype, **shape_kw):
    train = ratio_split(data, seed=1).matrix(data, "train")
    shape = AEShape(data.n_items, h1=16, h2=8, dropout=0.5, mode=mode, **shape_kw)
    cfg = FedSettings(strategy=strategy, options=dict(options), rounds=4, fraction=0.5, local_epochs=4, seed=3,
                      max_cohort_clients=4)                     # several cohorts per round
    return lambda: Federation(shape, cfg, train, dtype=dtype)


def _state(fed: Federation) -> dict[str, torch.Tensor]:
    out = {f"global.{k}": v.clone() for k, v in fed.global_p.items()}
    if fed.store is not None:
        out.update({f"client.{k}": fed.store.full(k).clone() for k in fed.store.keys})
    return out


class StrategyConformance:
    strategy: str = ""
    options: dict = {}

    @property
    def strat(self):
        return get_strategy(self.strategy, self.options)

    # -- paths ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("mode", ["explicit", "implicit"])
    @pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
    def test_reference_generic_and_fast_paths_agree(self, tiny_data, mode, dtype, tol):
        make = _fed(tiny_data, self.strategy, self.options, mode, dtype)
        fast = self.strat.closed_form or self.strat.split_update or getattr(self.strat, "gate_update", False)
        paths = ["reference", "generic"] + (["vectorized"] if fast else [])
        feds = {p: make() for p in paths}
        for _ in range(2):
            losses = {p: f.run_round(p).loss for p, f in feds.items()}
            for p in paths[1:]:
                assert losses[p] == pytest.approx(losses["reference"], rel=1e-5)
        ref = _state(feds["reference"])
        for p in paths[1:]:
            got = _state(feds[p])
            assert got.keys() == ref.keys()
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], atol=tol, rtol=0, msg=f"{p} path, {k}")
        fresh = _state(make())
        assert any((ref[k] - fresh[k]).abs().max() > 1e-4 for k in ref), "training moved nothing"

    @pytest.mark.parametrize("mode", ["explicit", "implicit"])
    def test_content_model_generic_path_matches_the_reference(self, tiny_data, mode):
        if not self.strat.federated:
            pytest.skip("content needs a federated strategy")
        try:
            self.strat.check(AEShape(tiny_data.n_items, h1=16, h2=8, content_dim=5), True)
        except ConfigError as e:
            pytest.skip(f"the strategy refuses content: {e}")
        content = torch.randn(tiny_data.n_items, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        train = ratio_split(tiny_data, seed=1).matrix(tiny_data, "train")
        shape = AEShape(tiny_data.n_items, h1=16, h2=8, mode=mode, content_dim=5, input_tie=2.0)
        cfg = FedSettings(strategy=self.strategy, options=dict(self.options), rounds=3, fraction=0.5, local_epochs=3,
                          seed=2, max_cohort_clients=4)
        gen, ref = (Federation(shape, cfg, train, dtype=torch.float64, content=content) for _ in range(2))
        for _ in range(2):
            gen.run_round("generic")
            ref.run_round("reference")
        a, b = _state(gen), _state(ref)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-10, rtol=0, msg=k)

    # -- messages ------------------------------------------------------------------------------
    def test_messages_hold_no_personal_parameter_and_bytes_are_counted_exactly(self, tiny_data):
        s = self.strat
        fed = _fed(tiny_data, self.strategy, self.options, "explicit", torch.float32)()
        if not s.sends_messages:
            with pytest.raises(Exception, match="messages"):
                fed.client_messages(fed.sample(0))
            return
        fed.run_round()
        users = fed.sample(fed.round)
        msgs, _ = fed.client_messages(users)
        full = msgs
        msgs = {u: s.compress(m, fed.global_p) for u, m in msgs.items()}     # what a deployed client sends
        for u, m in msgs.items():                                          # the server restores the update
            back = expand_update(m, fed.global_p, fed.shape)
            assert set(back) == set(full[u]) and all(np.array_equal(back[k], full[u][k]) for k in back)
        personal = {k: fed.store.full(k) for k in fed.store.keys}          # after the round: what the client keeps
        allowed = set(s.message_keys(fed.shape)) | {"item_ids", "weight"} | set(s.extra_message_keys)
        if not s.sends_rows:                     # the message format's row keys, empty (FedPer: no ids either)
            allowed |= {"dec_out", "dec_ob"}
            assert all(m[k].size == 0 for m in msgs.values() for k in ("item_ids", "dec_out", "dec_ob"))
        for u, m in msgs.items():
            assert set(m) == allowed, set(m) ^ allowed
            assert not {k for k in set(m) & set(s.personal) if m[k].size}
            n = int(fed.n_per_user[u])
            assert sum(v.nbytes for v in m.values()) == client_bytes(s, fed.shape, n)[0]
            for v in m.values():
                if v.size < 4:
                    continue
                for k, p in personal.items():        # no personal value, not even scaled, in the message
                    flat = p.reshape(-1, p.shape[-1]) if p.dim() > 1 else p[None]
                    vv = torch.as_tensor(v, dtype=p.dtype).reshape(-1)
                    for row in flat:
                        if row.numel() == vv.numel():
                            cos = torch.nn.functional.cosine_similarity(row.double(), vv.double(), dim=0)
                            assert abs(float(cos)) < 0.999, f"message of user {u} carries personal {k}"

    # -- secure aggregation --------------------------------------------------------------------
    @pytest.mark.parametrize("fixed_rows", [0, 5])
    def test_secure_aggregation_reveals_the_plain_sums_bit_for_bit(self, tiny_data, fixed_rows):
        import dataclasses

        import numpy as np

        from federation.privacy import channel, secagg as sa

        s = self.strat
        if not s.sends_messages or s.individual_updates or not s.sends_rows:
            pytest.skip("no per-client messages to sum" if not s.sends_messages else
                        "the strategy's server needs each client's own update (refused: tests/test_strategy_fedcac.py)"
                        if s.individual_updates else "no shared item rows (refused: tests/test_strategy_fedper.py)")
        st = sa.SecAggSettings(frac_bits=24, max_clients=16, min_clients=1, pad_min=4, fixed_rows=fixed_rows)
        make = _fed(tiny_data, self.strategy, self.options, "explicit", torch.float32)
        fast, msg, plain = make(), make(), make()
        for f in (fast, msg):
            f.cfg = dataclasses.replace(f.cfg, secagg=st)
        users = fast.sample(0)
        rows, dense, _ = fast.secure_round_sums(users, fast.lr_at(0))       # the engine's batched path
        msgs, _ = msg.client_messages(users, msg.lr_at(0))                  # what the clients send
        want = msg.secure_ring_sums(msgs)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(dense, want[1])
        # ... and what the real protocol (DPF keys, sealed, two aggregators) reveals for those messages.
        lay = msg.secure_layout()
        keys = [channel.new_private_key() for _ in range(2)]
        aggs = [sa.Aggregator(p, keys[p], lay, st, "conf") for p in (0, 1)]
        for a in aggs:
            a.open_round(0, users)
        pubs = tuple(channel.public_bytes(k) for k in keys)
        for u in users:
            plain_ = sa.client_payloads(*msg.secure_payload_parts(int(u), msgs[int(u)]), lay, st)
            for p, blob in enumerate(sa.seal_payloads(pubs, "conf", 0, int(u), plain_)):
                aggs[p].receive(int(u), blob)
        got = sa.combine(aggs[0].share(users), aggs[1].share(users))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        if fixed_rows:                       # clients over fixed_rows sent a subset: not the plain update
            assert (np.diff(fast.train.indptr) > fixed_rows).any()
            return
        # A secure round updates the decoder as a plain round does, up to the fixed-point resolution.
        fast2 = make()
        fast2.cfg = dataclasses.replace(fast2.cfg, secagg=st)
        fast2.run_round()
        plain.run_round()
        for k in s.shared:
            torch.testing.assert_close(fast2.global_p[k], plain.global_p[k], atol=1e-5, rtol=0)

    # -- resume --------------------------------------------------------------------------------
    def test_a_resumed_run_equals_the_uninterrupted_run_bit_for_bit(self, tiny_data):
        make = _fed(tiny_data, self.strategy, self.options, "implicit", torch.float32)
        full = make()
        for _ in range(3):
            full.run_round()
        first = make()
        first.run_round()
        saved = {k: v.clone() for k, v in first.state_tensors().items()}
        resumed = make()
        resumed.load_state_tensors(saved, 1)
        for _ in range(2):
            resumed.run_round()
        a, b = _state(full), _state(resumed)
        for k in a:
            assert torch.equal(a[k], b[k]), k

    # -- deployment ----------------------------------------------------------------------------
    def test_the_deployed_run_equals_the_in_process_run(self, tmp_path):
        from federation.deploy.server import FederatedServer
        from federation.runs.config import parse_config
        from federation.runs.jobs import build_federation
        from loopback import Loopback, nodes_for, synth_catalogue
        from recsys.errors import ConfigError

        d = {"name": "conf", "seed": 1, "data": {"path": str(synth_catalogue(tmp_path))},
             "model": {"mode": "explicit", "hidden": [16, 8]}, "eval": {"every": 0},
             "federation": {"strategy": self.strategy, "options": dict(self.options), "rounds": 2, "fraction": 0.4}}
        cfg = parse_config(d)
        nodes, data, split = nodes_for(cfg, tmp_path)
        if not self.strat.sends_messages:
            with pytest.raises(ConfigError, match="sends none"):
                FederatedServer(cfg, tmp_path / "run", Loopback(nodes))
            return
        FederatedServer(cfg, tmp_path / "run", Loopback(nodes)).run()
        sim = build_federation(cfg, data, split)
        for _ in range(cfg.federation.rounds):
            sim.run_round()
        from safetensors.torch import load_file
        ck = load_file(str(tmp_path / "run/checkpoint.safetensors"))
        for k in self.strat.shared:
            torch.testing.assert_close(ck[f"global.{k}"], sim.global_p[k], atol=1e-5, rtol=0)
        for node in nodes.values():                  # every personal parameter, node by node
            for k in self.strat.personal:
                if k == "enc_in":
                    continue                         # per-entry rows: checked by tests/test_deployment.py
                torch.testing.assert_close(node.fed.store.full(k)[node.users], sim.store.full(k)[node.users],
                                           atol=1e-5, rtol=0)


def tiny_fed(data, strategy: str, options: dict, mode: str = "implicit", dtype=torch.float64, **cfg_kw) -> Federation:
    """A small federation for a strategy's own tests: hidden 16/8, half the clients per round, 3 local steps."""
    train = ratio_split(data, seed=1).matrix(data, "train")
    shape = AEShape(data.n_items, h1=16, h2=8, mode=mode)
    kw = {"rounds": 3, "fraction": 0.5, "local_epochs": 3, "seed": 3, **cfg_kw}
    return Federation(shape, FedSettings(strategy=strategy, options=dict(options), **kw), train, dtype=dtype)
