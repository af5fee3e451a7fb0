"""Sequence aggregation with a learnable [AGG] token over a small transformer encoder."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_rate._validation import check_bool, check_choice, check_int, check_positive, check_probability

__all__ = ["AggregatorOutput", "SeqAggregator", "TransformerLayer"]

Activation = Literal["relu", "gelu"]


class TransformerLayer(nn.Module):
    """One transformer encoder layer on :func:`torch.nn.functional.scaled_dot_product_attention`.

    Same parameters, initialisation and dropout placement as :class:`torch.nn.TransformerEncoderLayer`
    (``batch_first=True``), so checkpoints map one to one, but attention goes through the fused kernel and
    the key padding mask needs no float conversion.

    Args:
        d_model: Token size.
        num_heads: Number of attention heads; must divide ``d_model``.
        dim_feedforward: Hidden size of the feed-forward block.
        dropout: Dropout on attention weights, after attention and inside / after the feed-forward block.
        norm_first: Pre-norm if ``True``, post-norm (original Transformer, upstream seq-JEPA) if ``False``.
        activation: ``"relu"`` or ``"gelu"``.
        layer_norm_eps: Epsilon of the layer norms.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a size is invalid or ``d_model`` is not divisible by ``num_heads``.

    Shape:
        - x: ``(B, S, d_model)``
        - attn_mask: optional bool ``(B, 1, 1, S)`` or broadcastable, ``True`` = may attend
        - output: ``(B, S, d_model)``

    Examples:
        >>> layer = TransformerLayer(d_model=16, num_heads=4, dim_feedforward=32)
        >>> layer(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        *,
        norm_first: bool = False,
        activation: Activation = "relu",
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_int(d_model, "d_model")
        check_int(num_heads, "num_heads")
        check_int(dim_feedforward, "dim_feedforward")
        if d_model % num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by num_heads, got d_model={d_model}, num_heads={num_heads}"
            )
        self.dropout_p = check_probability(dropout, "dropout")
        check_choice(activation, "activation", ("relu", "gelu"))
        self.num_heads = num_heads
        self.norm_first = check_bool(norm_first, "norm_first")
        self.activation = activation
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        layer_norm_eps = check_positive(layer_norm_eps, "layer_norm_eps")
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(self.dropout_p)
        self.reset_attention_parameters()

    def reset_attention_parameters(self) -> None:
        """Initialises attention like ``nn.MultiheadAttention``: Xavier-uniform qkv, zero biases."""
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _attention(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        batch, seq, dim = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        projected: Tensor = self.dropout(self.out_proj(out.transpose(1, 2).reshape(batch, seq, dim)))
        return projected

    def _feedforward(self, x: Tensor) -> Tensor:
        hidden = F.relu(self.linear1(x)) if self.activation == "relu" else F.gelu(self.linear1(x))
        out: Tensor = self.dropout(self.linear2(self.dropout(hidden)))
        return out

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Applies the layer; ``attn_mask`` follows SDPA's bool semantics (``True`` = may attend).

        Raises:
            ValueError: If ``x`` is not ``(B, N, d_model)``.
        """
        if x.ndim != 3 or x.shape[-1] != self.norm1.normalized_shape[0]:
            raise ValueError(
                f"x must have shape (B, N, d_model) with d_model={self.norm1.normalized_shape[0]}, "
                f"got {tuple(x.shape)}"
            )
        if self.norm_first:
            x = x + self._attention(self.norm1(x), attn_mask)
            return x + self._feedforward(self.norm2(x))
        x = self.norm1(x + self._attention(x, attn_mask))
        out: Tensor = self.norm2(x + self._feedforward(x))
        return out


class AggregatorOutput(NamedTuple):
    """Output of :class:`SeqAggregator`.

    Attributes:
        agg: ``(B, d_model)`` output at the [AGG] token (``z_AGG``).
        tokens: ``(B, N, d_model)`` outputs at the input tokens (padded positions hold unspecified values).
    """

    agg: Tensor
    tokens: Tensor


class SeqAggregator(nn.Module):
    """Aggregates a sequence of tokens into one vector through a learnable [AGG] token.

    The input ``[AGG; x_1; ...; x_N]`` goes through ``num_layers`` transformer layers and a final LayerNorm;
    the output at the [AGG] position is the sequence summary ``z_AGG``. Defaults follow upstream seq-JEPA
    (``d_model = 512 + 128``, 3 layers, 4 heads, feed-forward ``4 * d_model``, dropout 0.1, post-norm, [AGG]
    initialised to zero, no position embedding) with these differences: every layer draws its own initial
    weights (``nn.TransformerEncoder`` deep-copies one layer, so upstream layers start identical), padding is
    supported, pre-norm and a learned position embedding are options, and attention uses the fused kernel.

    Args:
        d_model: Token size (the size of ``x``, plus that of ``cond`` when given).
        num_layers: Number of transformer layers.
        num_heads: Attention heads; must divide ``d_model``.
        dim_feedforward: Feed-forward hidden size; ``None`` means ``4 * d_model``.
        dropout: Dropout probability inside the layers.
        norm_first: Pre-norm layers if ``True``; upstream uses post-norm.
        final_norm: Apply a LayerNorm to the outputs (upstream: yes).
        max_len: If given, add a learned position embedding to the input tokens (not to [AGG]) and accept
            at most ``max_len`` tokens; ``None`` (upstream) adds none, which makes the aggregator invariant to
            the order of the tokens.
        activation: Feed-forward activation, ``"relu"`` (upstream) or ``"gelu"``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a size is invalid.

    Shape:
        - x: ``(B, N, d_x)``; cond: optional ``(B, N, d_c)`` with ``d_x + d_c = d_model``
        - key_padding_mask: optional bool ``(B, N)``, ``True`` = padding (as in PyTorch); padded tokens are
          zeroed and never attended to, so their content (NaN and Inf included) changes neither the outputs
          at valid positions nor their gradients.
        - output: :class:`AggregatorOutput` with ``agg`` ``(B, d_model)`` and ``tokens`` ``(B, N, d_model)``.

    Examples:
        >>> agg = SeqAggregator(d_model=16, num_layers=2, num_heads=4)
        >>> z, actions = torch.randn(3, 5, 12), torch.randn(3, 5, 4)
        >>> pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
        >>> out = agg(z, actions, key_padding_mask=pad)
        >>> out.agg.shape, out.tokens.shape
        (torch.Size([3, 16]), torch.Size([3, 5, 16]))
    """

    def __init__(
        self,
        d_model: int = 640,
        num_layers: int = 3,
        num_heads: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        *,
        norm_first: bool = False,
        final_norm: bool = True,
        max_len: int | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        # d_model sizes the tokens built here, before the layers that check it again; the layers alone check
        # num_heads, dim_feedforward, dropout, norm_first and activation.
        self.d_model = check_int(d_model, "d_model")
        check_int(num_layers, "num_layers")
        self.max_len = None if max_len is None else check_int(max_len, "max_len")
        self.agg_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = None if max_len is None else nn.Parameter(torch.zeros(1, max_len, d_model))
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        ff = 4 * d_model if dim_feedforward is None else dim_feedforward
        # Separate constructor calls, so each layer gets its own random initial weights.
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, num_heads, ff, dropout, norm_first=norm_first, activation=activation)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(
        self, x: Tensor, cond: Tensor | None = None, *, key_padding_mask: Tensor | None = None
    ) -> AggregatorOutput:
        """Aggregates ``x`` (optionally concatenated with ``cond`` on the feature dim).

        Args:
            x: Tokens ``(B, N, d_x)``.
            cond: Optional per-token conditioning ``(B, N, d_c)`` (e.g. action embeddings).
            key_padding_mask: Optional bool ``(B, N)``, ``True`` = padding.

        Returns:
            :class:`AggregatorOutput`.

        Raises:
            ValueError: If shapes do not match ``d_model``, each other or ``max_len``.
            TypeError: If ``key_padding_mask`` is not bool.
        """
        if x.ndim != 3:
            raise ValueError(f"x must have shape (B, N, d), got {tuple(x.shape)}")
        if cond is not None:
            if cond.ndim != 3 or cond.shape[:2] != x.shape[:2]:
                raise ValueError(f"cond must have shape {(*x.shape[:2], 'd_c')}, got {tuple(cond.shape)}")
            x = torch.cat((x, cond), dim=-1)
        batch, num_tokens, dim = x.shape
        if dim != self.d_model:
            raise ValueError(
                f"token size must equal d_model={self.d_model}, got {dim} (shape {tuple(x.shape)})"
            )
        if self.pos_embed is not None and num_tokens > self.pos_embed.shape[1]:
            raise ValueError(f"sequence has {num_tokens} tokens, more than max_len={self.pos_embed.shape[1]}")
        attn_mask = None
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(f"key_padding_mask must be a bool tensor, got dtype {key_padding_mask.dtype}")
            if key_padding_mask.shape != (batch, num_tokens):
                raise ValueError(
                    f"key_padding_mask must have shape {(batch, num_tokens)}, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            # A masked key gets attention weight 0, but 0 * NaN = NaN: zero padded tokens (e.g. a buffer from
            # torch.empty) so that their content cannot reach valid outputs or their gradients.
            x = x.masked_fill(key_padding_mask[..., None], 0.0)
            # [AGG] is never padded, so every query row attends to at least one key and softmax stays finite.
            keep = torch.cat((key_padding_mask.new_zeros(batch, 1), key_padding_mask), dim=1).logical_not()
            attn_mask = keep[:, None, None, :]
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, :num_tokens]
        x = torch.cat((self.agg_token.expand(batch, 1, dim).to(x.dtype), x), dim=1)
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.norm(x)
        return AggregatorOutput(agg=x[:, 0], tokens=x[:, 1:])
