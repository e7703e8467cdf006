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
    """Per-layer keys and values (B, nh, capacity, hs), the number of positions filled and the model's max_len.

    The capacity grows (doubling, at most ``max_len``) as positions are appended, so a batch of
    short streams never holds memory for ``max_len`` positions.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0
    max_len: int | None = None  # the model's max_len (None: no limit but the memory)

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, device=None, dtype=torch.float32, capacity: int = 64) -> KVCache:
        hs = config.d_model // config.n_head
        shape = (batch, config.n_head, min(capacity, config.max_len), hs)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)], 0, config.max_len)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, new: int) -> None:
        """Make room for ``new`` more positions (raises past ``max_len``)."""
        need = self.length + new
        if self.max_len is not None and need > self.max_len:
            raise ValueError(f"sequence of {need} tokens exceeds the model's max_len {self.max_len}")
        if need <= self.capacity:
            return
        size = max(need, 2 * self.capacity)
        size = size if self.max_len is None else min(self.max_len, size)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros(old.shape[:2] + (size,) + old.shape[3:])  # (B, nh, size, hs)
                grown[:, :, :self.length] = old[:, :, :self.length]
                store[i] = grown

    def select(self, index: torch.Tensor) -> KVCache:
        """The cache of the sequences ``index`` (resampling of particles, dropping finished ones).

        Only the filled positions are copied.
        """
        n = self.length

        def take(x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros((len(index),) + x.shape[1:])  # (B', nh, capacity, hs)
            out[:, :, :n] = x[index, :, :n]
            return out

        return KVCache([take(k) for k in self.keys], [take(v) for v in self.values], n, self.max_len)


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
            cache.keys[layer][:, :, start:start + T] = k.to(cache.keys[layer].dtype)
            cache.values[layer][:, :, start:start + T] = v.to(cache.values[layer].dtype)
            k_all = cache.keys[layer][:, :, :start + T].to(q.dtype)  # (B, nh, start + T, hs)
            v_all = cache.values[layer][:, :, :start + T].to(q.dtype)  # (B, nh, start + T, hs)
            if T == 1:  # one new position sees every key: no mask, so the fused kernels apply
                y = F.scaled_dot_product_attention(q, k_all, v_all)  # (B, nh, 1, hs)
            else:  # new position i (absolute start + i) sees keys 0 .. start + i
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
        if cache is not None:
            cache.reserve(x.shape[1])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)
