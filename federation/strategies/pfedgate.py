"""pFedGate (Chen et al., ICML 2023): a personal gating layer picks, under the client's sparsity budget,
which blocks of the shared model it uses and how much, and is trained with the model.

Adapted to the autoencoder. The shared decoder's hidden layer (H1 units) is cut into ``blocks``
equal blocks; block k is its units' rows of the dense layer (dec_W1, dec_b1) and their columns of
the item layer (dec_out). The personal gate reads the user's code h (B, H1):

    g = sigmoid(G h + c)                       G (K, H1), c (K,) personal, never sent       (1)

The budget s allows round(s·K) blocks (at least one). Each block has the same size, so the paper's
knapsack (maximise the summed gate values of the chosen blocks under the size budget) picks the
round(s·K) largest gates. The sparse model scales the chosen blocks by their gate and drops the rest:

    m_k = g_k if k is chosen else 0;   h' = h ⊙ expand(m);   score_ui = W_i · h' + b_i           (2)

which is the item layer's block columns scaled by m_k (no batch normalisation: one row per client).
A deployed client sends only its kept blocks (``compress``; the bytes column of the benchmark).
The choice is made once per round from the gate at its received value (the client's sparse model
for the round); the gate values of the chosen blocks get gradients through (2) and train with
everything else. Parameters of dropped blocks are not part of the client's model: they are neither
trained nor changed (not even by weight decay), so the server's average over holders is unaffected
by them. With s = 1 every block is kept and the gate only scales.

Decoder compute per client scales with the kept fraction: the dense layer's and the item layer's
multiply-adds are s of the full model's (``decoder_flops``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from federation.strategies.base import Param
from federation.strategies.messages import compress_blocks
from federation.strategies.personalfr import PersonalFR
from recsys.errors import ConfigError
from recsys.models.autoencoder import AEShape

GATE_W, GATE_B = "gate.W", "gate.b"


class PFedGateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sparsity: float = Field(0.5, gt=0, le=1)     # s: the fraction of blocks a client may keep
    blocks: int = Field(16, ge=1)                # K: blocks of the decoder's hidden units
    gate_bias: float = 2.0                       # c's start value: gates start near sigmoid(2) = 0.88


def kept_blocks(blocks: int, sparsity: float) -> int:
    """round(s K), at least 1."""
    return max(1, min(blocks, int(math.floor(sparsity * blocks + 0.5))))


def knapsack(gates: torch.Tensor, sizes: torch.Tensor, budget: float) -> torch.Tensor:
    """The paper's selection, for any block sizes: maximise the summed gate values under
    Σ size ≤ budget, greedily by value per size (exact for equal sizes, where it is the top gates).
    gates (B, K), sizes (K,) -> (B, K) 0/1 float mask."""
    order = torch.argsort(gates / sizes, dim=1, descending=True, stable=True)           # (B, K)
    used = torch.cumsum(sizes[order], dim=1)                                             # (B, K)
    chosen = (used <= budget + 1e-9).to(gates.dtype)
    chosen[:, 0] = 1.0                                                                   # at least one block
    return torch.zeros_like(gates).scatter(1, order, chosen)


def gate_values(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1): h (B, H1), W (B, K, H1), b (B, K) -> g (B, K)."""
    return torch.sigmoid(torch.bmm(W, h.unsqueeze(2)).squeeze(2) + b)


def gated(h: torch.Tensor, g: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(2): h ⊙ expand(g ⊙ chosen), h (B, H1), g and chosen (B, K) -> (B, H1)."""
    m = g * chosen
    return h * m.repeat_interleave(h.shape[1] // g.shape[1], dim=1)


class PFedGate(PersonalFR):
    name = "pfedgate"
    summary = "PersonalFR plus a personal gate that keeps s of the decoder's blocks (knapsack) and scales them"
    paper = "Chen et al. 2023, Efficient Personalized Federated Learning via Sparse Model-Adaptation (pFedGate)"
    Options = PFedGateOptions
    closed_form = False
    extra_personal = {GATE_W: Param("personal", GATE_W, False), GATE_B: Param("personal", GATE_B, False)}

    no_content = "gates the free item rows"

    def check(self, shape: AEShape, content: bool) -> None:
        super().check(shape, content)
        if shape.h1 % self.options.blocks:
            raise ConfigError(f"pfedgate: blocks={self.options.blocks} must divide the decoder width {shape.h1}")

    def personal_init(self, shape: AEShape, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        K = self.options.blocks
        g = torch.Generator().manual_seed(seed + 5_151)
        bound = 1.0 / math.sqrt(shape.h1)
        return {GATE_W: (torch.rand(K, shape.h1, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(dtype),
                GATE_B: torch.full((K,), self.options.gate_bias, dtype=dtype)}

    def choose(self, h: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The round's chosen blocks (B, K) from codes h (B, H1) and the gate (W, b)."""
        K = self.options.blocks
        g = gate_values(h, W, b)
        sizes = torch.ones(K, dtype=h.dtype, device=h.device)
        return knapsack(g, sizes, float(kept_blocks(K, self.options.sparsity)))

    # -- training ------------------------------------------------------------------------------
    # The gate is a personal transform of the item layer's input, so the engine can also train the
    # rest on the closed-form path with the gate's own SGD beside it (``gate_plan``; Federation.train_cohort).
    gate_update = True

    def gate_plan(self, run):
        """The round's sparse model from the received gate and code (no dropout): the transform h3 -> h3'
        for the chosen blocks, the gate's start values, and the chosen blocks (B, K)."""
        h0, _ = run.start_hidden(0, keep=1.0)
        chosen = self.choose(h0, run.start[GATE_W], run.start[GATE_B])                   # (B, K)

        def apply(h3: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
            return gated(h3, gate_values(h3, p[GATE_W], p[GATE_B]), chosen)
        return apply, {GATE_W: run.start[GATE_W], GATE_B: run.start[GATE_B]}, chosen

    def local_update(self, run) -> torch.Tensor:
        apply, _, chosen = self.gate_plan(run)

        def loss(run_, p, step):
            h3, m = run_.hidden(p, step)
            return run_.loss_from_hidden(p, apply(h3, p), m)

        out = run.sgd(tuple(run.values), loss, run.steps)
        run.values.update(self.kept(run.values, run.start, chosen, run.cohort.seg))
        return out

    def kept(self, values: dict[str, torch.Tensor], start: dict[str, torch.Tensor], chosen: torch.Tensor,
             seg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dropped blocks are not in the client's model: their received values back (undoing weight
        decay, their only change). values/start: dec_W1 (B, H1, H2), dec_b1 (B, H1), dec_out (T, H1)."""
        H1 = values["dec_b1"].shape[1]
        units = chosen.repeat_interleave(H1 // self.options.blocks, dim=1).to(torch.bool)   # (B, H1)
        return {"dec_W1": torch.where(units[:, :, None], values["dec_W1"], start["dec_W1"]),
                "dec_b1": torch.where(units, values["dec_b1"], start["dec_b1"]),
                "dec_out": torch.where(units.index_select(0, seg), values["dec_out"], start["dec_out"])}

    # -- the message ----------------------------------------------------------------------------
    extra_message_keys = ("blocks",)

    def compress(self, msg: dict[str, np.ndarray], received: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Only the blocks the client kept: a dropped block is exactly the received model (it was not
        part of the client's model), so its rows of dec_W1 / dec_b1 and columns of dec_out are left out
        and the block flags (K bytes) say which were sent. What the server learns beyond PersonalFR's
        message: which blocks each client kept."""
        K, H1 = self.options.blocks, msg["dec_W1"].shape[0]
        g = {k: received[k].detach().float().cpu().numpy() for k in ("dec_W1", "dec_b1", "dec_out")}
        ids = np.asarray(msg["item_ids"])
        same = ((msg["dec_W1"] == g["dec_W1"]).all(1) & (msg["dec_b1"] == g["dec_b1"])
                & (msg["dec_out"] == g["dec_out"][ids]).all(0))                            # (H1,)
        kept = ~same.reshape(K, H1 // K).all(1)
        if not kept.any():                              # nothing moved (e.g. lr 0): send one block
            kept[0] = True
        return compress_blocks(msg, kept)

    def message_bytes(self, shape: AEShape, n_rows):
        k = kept_blocks(self.options.blocks, self.options.sparsity) * (shape.h1 // self.options.blocks)
        floats = n_rows * (k + 1) + k * shape.h2 + k + 1                                  # rows + biases, dense, weight
        return floats * 4 + n_rows * 8 + self.options.blocks

    # -- inference -----------------------------------------------------------------------------
    def hidden(self, h3: torch.Tensor, personal: dict[str, torch.Tensor]) -> torch.Tensor:
        g = gate_values(h3, personal[GATE_W], personal[GATE_B])
        return gated(h3, g, self.choose(h3, personal[GATE_W], personal[GATE_B]))


def decoder_flops(shape: AEShape, sparsity: float, blocks: int, rows: int) -> int:
    """Multiply-adds of one decoder forward for a client scoring ``rows`` items with s of the blocks kept."""
    kept = kept_blocks(blocks, sparsity) / blocks
    return int(kept * shape.h1 * (shape.h2 + rows))
