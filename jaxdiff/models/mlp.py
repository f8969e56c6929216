"""A residual MLP for points [B, D]: the network of the 2-D toy sets.

The usual toy-diffusion denoiser (e.g. Grathwohl et al. 2019's toy sets, as
trained in many diffusion tutorials): x is lifted to `features`, then
`num_blocks` pre-norm residual blocks h + Dense(swish(Dense(swish(LN(h)) +
temb))), each fed the time (+ class) embedding of `layers.TimeEmbedding`;
the output layer starts at zero, so the network outputs 0 at initialisation
(as the U-Net's conv_out does).
"""

import jax.numpy as jnp
from flax import linen as nn

from jaxdiff.models import layers


class MLP(nn.Module):
  """x [B, dim], t [B] -> [B, dim].

  Attributes:
    dim: input and output width.
    features: hidden width (and of the time embedding).
    num_blocks: residual blocks.
    dropout: dropout rate inside the blocks.
    num_classes, class_dropout: class conditioning with a null class (as `UNet`).
    time_scale, time_shift: the embedding sees time_scale t + time_shift.
    dtype: compute dtype; parameters stay float32.
  """
  dim: int = 2
  features: int = 256
  num_blocks: int = 3
  dropout: float = 0.0
  num_classes: int | None = None
  class_dropout: float = 0.1
  time_scale: float = 1000.0
  time_shift: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def describe(self) -> str:
    return f"MLP(dim={self.dim}, features={self.features}, num_classes={self.num_classes})"

  @nn.compact
  def __call__(self, x, t, cond=None, *, deterministic: bool):
    if x.ndim != 2 or x.shape[-1] != self.dim:
      raise ValueError(f"{self.describe()} takes points [B, {self.dim}], got shape {x.shape}")
    B = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    dense = lambda features, name, init=layers.xavier_uniform: nn.Dense(
        features, kernel_init=init, dtype=self.dtype, name=name)
    temb = layers.TimeEmbedding(self.features, self.features, self.time_scale, self.time_shift,
                                freq_shift=1.0, flip_sin_to_cos=False, dtype=self.dtype,
                                name="time_embed")(t)
    temb = layers.add_class_embedding(temb, cond, self.num_classes, self.class_dropout,
                                      deterministic=deterministic, config=self.describe(),
                                      name="class_embed")
    h = dense(self.features, "dense_in")(x.astype(self.dtype))
    for i in range(self.num_blocks):
      r = nn.LayerNorm(dtype=self.dtype, name=f"block_{i}_norm")(h)
      r = dense(self.features, f"block_{i}_dense_0")(nn.swish(r)) + temb
      r = nn.Dropout(self.dropout)(nn.swish(r), deterministic=deterministic)
      h = h + dense(self.features, f"block_{i}_dense_1")(r)
    out = dense(self.dim, "dense_out", layers.zeros)(nn.swish(h))
    return out.astype(jnp.float32)
