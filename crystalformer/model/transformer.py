"""Decoder-only transformer: pre-LayerNorm blocks, ``scaled_dot_product_attention``, a KV cache.

Reads like nanoGPT: B batch, T new positions, C = d_model, nh heads of size hs = C / nh.
The cache holds keys and values of every position decoded so far, so incremental decoding
costs one position per step; all sequences of a batch advance together (each step emits one
token per sequence, forced tokens included), so one shared length suffices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig


@dataclass
class KVCache:
    """Per-layer keys and values (B, nh, max_len, hs) and the number of positions filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, device=None, dtype=torch.float32) -> KVCache:
        hs = config.d_model // config.n_head
        shape = (batch, config.n_head, config.max_len, hs)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)])

    def select(self, index: torch.Tensor) -> KVCache:
        """The cache of the sequences ``index`` (resampling of particles, dropping finished ones)."""
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values], self.length)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)  # (B, nh, T, hs)
        else:
            start = cache.length
            if start + T > cache.keys[layer].shape[2]:
                raise ValueError(f"sequence of {start + T} tokens exceeds the model's max_len "
                                 f"{cache.keys[layer].shape[2]}")
            cache.keys[layer][:, :, start:start + T] = k.to(cache.keys[layer].dtype)
            cache.values[layer][:, :, start:start + T] = v.to(cache.values[layer].dtype)
            k_all = cache.keys[layer][:, :, :start + T].to(q.dtype)  # (B, nh, start + T, hs)
            v_all = cache.values[layer][:, :, :start + T].to(q.dtype)  # (B, nh, start + T, hs)
            # new position i (absolute start + i) sees keys 0 .. start + i
            allowed = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)  # (T, S)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=allowed)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return F.dropout(self.proj(y), dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, config.ff_width), nn.GELU(),
                                 nn.Linear(config.ff_width, config.d_model), nn.Dropout(config.dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """The stack of blocks and the final LayerNorm: (B, T, C) embeddings -> (B, T, C) hidden states."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)
