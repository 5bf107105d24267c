"""Small residual network for images (He et al., 2016), with BatchNorm after every convolution.

stem: 3x3 conv -> BatchNorm -> activation; then `len(stage_sizes)` stages of basic blocks
(conv -> BN -> act -> conv -> BN, plus the input, then act), the first block of every later stage
halving the spatial size with stride 2 and doubling the channels (its shortcut a 1x1 conv + BN);
global average pooling; a linear head. The BatchNorm running statistics are `nnx.BatchStat`
variables: they update in `model.train()` mode, are not touched by the optimizer (it updates
`nnx.Param` only), and travel with the parameters through checkpoints, releases and `gitops.load`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from gitops.learn.architectures.base import activation


class BasicBlock(nnx.Module):
    """ResNet's basic block (He et al. 2016): two 3x3 conv+BN with an identity or 1x1-conv shortcut.

    (batch, H, W, in_ch) -> (batch, ceil(H/stride), ceil(W/stride), out_ch). The second BatchNorm's scale starts at
    zero so the block starts as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: str, *, dtype, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), strides=stride, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm1 = nnx.BatchNorm(out_ch, dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
        # zero-initialised last scale: each block starts as the identity, which steadies early training
        self.norm2 = nnx.BatchNorm(out_ch, scale_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
        if stride != 1 or in_ch != out_ch:
            self.proj = nnx.Conv(in_ch, out_ch, (1, 1), strides=stride, use_bias=False, dtype=dtype, rngs=rngs)
            self.proj_norm = nnx.BatchNorm(out_ch, dtype=dtype, rngs=rngs)
        else:
            self.proj = self.proj_norm = None
        self.act = act

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = activation(self.act)
        y = act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = x if self.proj is None else self.proj_norm(self.proj(x))
        return act(y + shortcut)


class ResNet(nnx.Module):
    """Small residual network for images, registered as `resnet` (see the module docstring).

    Input (batch, height, width, channels) float; output (batch, num_outputs) float32. Stage i has
    `stage_sizes[i]` blocks of `width * 2**i` channels.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        stage_sizes: Sequence[int] = (1, 1),
        width: int = 16,
        activation: str = "relu",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        in_ch = input_shape[-1]
        self.stem = nnx.Conv(in_ch, width, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
        self.stem_norm = nnx.BatchNorm(width, dtype=dtype, rngs=rngs)
        blocks = []
        channels = width
        for stage, size in enumerate(stage_sizes):
            out_ch = width * 2**stage
            for i in range(size):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out_ch, stride, activation, dtype=dtype, rngs=rngs))
                channels = out_ch
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(channels, num_outputs, dtype=dtype, rngs=rngs)
        self.activation_name = activation

    def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
        x = activation(self.activation_name)(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x).astype(jnp.float32)
