"""CrystalFormer: the pure-torch model, its heads and its exact log-likelihood.

The position before token t+1 predicts it (teacher forcing):

- discrete choices (space group, Wyckoff letter or [STOP], element) come from a categorical
  over the vocabulary masked by the grammar's structural rules (a composition prompt is
  context the model learns to follow; exact conditioning on it is the sampler's job, with
  importance weights for the mass the composition masks remove); forced tokens ([BOS], axis and lattice tokens,
  [EOS]) have exactly one legal value and contribute log 1 = 0; the composition prompt is
  conditioning, never scored (and [COMP] is never a choice: the prompt is given or absent);
- a free fractional coordinate (slot COORD) has a von Mises mixture density per unit of
  fractional coordinate;
- a free lattice parameter (slot LATTICE) has a Gaussian mixture on log(length / Å) or
  (angle - 90°) / 30°, reported as a density per Å or per degree. Lattice parameters are
  decoded one after another, so each sees the previous ones.

The continuous heads also see the embedding of the token whose value they predict (an axis
token P_x/P_y/P_z, or L_a ... L_gamma); that token is forced by the grammar, so it is known
before the value is drawn. ``log p(X)`` is thus the sum of discrete log-probabilities and
continuous log-densities in the tokenizer's units (fractions, Å, degrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..grammar import Grammar
from ..tokenizer import COMP, CrystalTokenizer, Slot
from .batching import collate
from .distributions import GaussianMixture, MaskedCategorical, VonMisesMixture
from .embedding import InputEmbedding, TokenTables
from .masks import StructuralMasks
from .transformer import KVCache, Transformer

DISCRETE_SLOTS = (Slot.SPACE_GROUP, Slot.WYCKOFF, Slot.ELEMENT, Slot.STOP)
SCORED_SLOTS = {"space_group": Slot.SPACE_GROUP, "wyckoff": Slot.WYCKOFF, "element": Slot.ELEMENT,
                "stop": Slot.STOP, "coord": Slot.COORD, "lattice": Slot.LATTICE}


@dataclass
class LogProb:
    """Per-crystal log-likelihood (B,) in nats and its breakdown by slot type (each (B,))."""

    total: torch.Tensor
    by_slot: dict[str, torch.Tensor]
    num_tokens: torch.Tensor  # (B,) scored positions per crystal

    def detach(self) -> LogProb:
        return LogProb(self.total.detach(), {k: v.detach() for k, v in self.by_slot.items()},
                       self.num_tokens)


class CrystalFormer(nn.Module):
    """Decoder-only transformer over crystal token streams with a hybrid head."""

    def __init__(self, config: ModelConfig, tokenizer: CrystalTokenizer):
        super().__init__()
        if tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the config says {config.vocab_size}")
        self.config = config
        self.tokenizer = tokenizer
        self.grammar = Grammar(tokenizer, n_max=config.n_max)
        self.comp_id = tokenizer.id(COMP)
        self.tables = TokenTables(tokenizer)
        self.embed = InputEmbedding(config, self.tables)
        self.transformer = Transformer(config)
        d = config.d_model
        self.token_head = nn.Linear(d, config.vocab_size)
        self.value_token = nn.Embedding(config.vocab_size, d)  # the forced token whose value is predicted
        self.coord_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3 * config.n_mix_coord))
        self.lattice_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3 * config.n_mix_lattice))
        self.apply(_init_weights)

    # ------------------------------------------------------------------ network
    @property
    def device(self) -> torch.device:
        return self.token_head.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden(self, ids: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, cache: KVCache | None = None,
               sg_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) hidden states and (B, T) running space group of the new positions.

        With a ``cache`` the positions continue at ``cache.length`` (incremental decoding);
        ``sg_prev`` (B,) is the space group already decoded (0 if none).
        """
        start = 0 if cache is None else cache.length
        x, sg = self.embed(ids, values, slots, start=start, sg_prev=sg_prev)  # (B, T, C), (B, T)
        return self.transformer(x, cache), sg

    def token_distribution(self, h: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0
                           ) -> MaskedCategorical:
        """Next-token categorical from hidden states (..., C) and legal-token masks (..., V)."""
        return MaskedCategorical(self.token_head(h), allowed, temperature)

    def coord_distribution(self, h: torch.Tensor, token: torch.Tensor) -> VonMisesMixture:
        """Density of the fractional coordinate carried by axis token ``token`` (...) after hidden ``h`` (..., C)."""
        return VonMisesMixture.from_raw(self.coord_head(h + self.value_token(token)))

    def lattice_distribution(self, h: torch.Tensor, token: torch.Tensor) -> GaussianMixture:
        """Density of the lattice parameter carried by lattice token ``token`` (...) after hidden ``h`` (..., C)."""
        return GaussianMixture.from_raw(self.lattice_head(h + self.value_token(token)), self.tables.is_length[token])

    # ------------------------------------------------------------------ likelihood
    def log_prob_batch(self, batch: dict[str, torch.Tensor]) -> LogProb:
        """Exact log p of each stream in a collated batch (ids, values, slots, mask[, allowed]).

        ``allowed`` (B, T, V) bool: legal tokens before each position (:meth:`Grammar.masks`);
        without it the masks of the discrete targets come from the device tables
        (:meth:`structural_masks`), which equal the grammar's structural masks.
        """
        ids, values, slots, valid = batch["ids"], batch["values"], batch["slots"], batch["mask"]
        allowed = batch.get("allowed")  # (B, T, V) precomputed masks, or None: from the device tables
        h, _ = self.hidden(ids, values, slots)  # (B, T, C)
        h = h[:, :-1]  # (B, T-1, C): position t predicts token t+1
        t_ids, t_values, t_slots = ids[:, 1:], values[:, 1:], slots[:, 1:]  # (B, T-1)
        t_valid = valid[:, 1:]
        terms = torch.zeros(t_ids.shape, dtype=torch.float32, device=ids.device)  # (B, T-1)

        discrete = t_valid & torch.isin(t_slots, torch.tensor(DISCRETE_SLOTS, device=ids.device))
        b, t = discrete.nonzero(as_tuple=True)
        if b.numel():
            if allowed is None:
                legal = self.structural_masks().target_masks(ids, slots, b, t + 1)  # (N, V)
            else:
                legal = allowed[:, 1:][b, t].clone()  # (N, V)
            legal[:, self.comp_id] = False  # the prompt is conditioning: never chosen
            lp = self.token_distribution(h[b, t], legal).log_prob(t_ids[b, t])  # (N,)
            bad = ~torch.isfinite(lp)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                word = self.tokenizer.vocab[int(t_ids[b[i], t[i]])]
                raise ValueError(f"crystal {int(b[i])} of the batch: token {word!r} at position {int(t[i]) + 1} "
                                 f"is not legal there under the grammar (n_max={self.config.n_max})")
            terms = terms.index_put((b, t), lp)
        for slot, make in ((Slot.COORD, self.coord_distribution), (Slot.LATTICE, self.lattice_distribution)):
            b, t = (t_valid & (t_slots == slot)).nonzero(as_tuple=True)
            if b.numel():
                terms = terms.index_put((b, t), make(h[b, t], t_ids[b, t]).log_prob(t_values[b, t]))
        by_slot = {name: (terms * (t_slots == s)).sum(1) for name, s in SCORED_SLOTS.items()}
        scored = t_valid & torch.isin(t_slots, torch.tensor(list(SCORED_SLOTS.values()), device=ids.device))
        return LogProb(terms.sum(1), by_slot, scored.sum(1))

    def structural_masks(self) -> StructuralMasks:
        """The grammar's mask tables on this model's device (built on first use: ~0.3 s of table reading)."""
        cache = self.__dict__.setdefault("_mask_tables", {})  # not a submodule: never in state_dict or DDP
        device = self.device
        if device not in cache:
            cache[device] = StructuralMasks(self.grammar).to(device)
        return cache[device]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LogProb]:
        """Negative mean log-likelihood per crystal, and the detached breakdown."""
        lp = self.log_prob_batch(batch)
        return -lp.total.mean(), lp.detach()

    @torch.no_grad()
    def log_prob(self, crystals, with_composition: bool = False, batch_size: int = 256) -> LogProb:
        """Exact log p(X) (or log p(X | composition) with ``with_composition``) of Crystal objects."""
        crystals = list(crystals)
        if not crystals:
            raise ValueError("log_prob needs at least one crystal")
        was_training = self.training
        self.eval()
        parts = []
        try:
            for i in range(0, len(crystals), batch_size):
                examples = []
                for c in crystals[i:i + batch_size]:
                    enc = self.tokenizer.encode(c, with_composition=with_composition)
                    examples.append({"ids": enc.ids, "values": enc.values, "slots": enc.slots,
                                     "num_atoms": enc.num_atoms})
                batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_id).items()}
                parts.append(self.log_prob_batch(batch))
        finally:
            self.train(was_training)
        return LogProb(torch.cat([p.total for p in parts]),
                       {k: torch.cat([p.by_slot[k] for p in parts]) for k in SCORED_SLOTS},
                       torch.cat([p.num_tokens for p in parts]))

    # ------------------------------------------------------------------ files
    def save(self, path, metadata: dict | None = None) -> None:
        """Write a model directory: config.json, model.safetensors, tokenizer.json, metadata.json."""
        from .files import save_model

        save_model(self, path, metadata)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
