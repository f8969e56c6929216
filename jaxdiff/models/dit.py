"""Diffusion Transformer, DiT (Peebles & Xie 2023), a Flax module.

The input [B, H, W, C] (a latent, in the paper 32x32x4) is cut into p x p
patches, each linearly embedded (a stride-p convolution) to the hidden width D,
plus a fixed 2-D sin-cos position embedding (sec. 3.2, "Patchify"; MAE's
get_2d_sincos_pos_embed). The condition c = embed(t) + embed(y) -- a
256-frequency sinusoid through a 2-layer MLP, plus a class embedding whose
extra row is the null class for classifier-free guidance -- drives every block
through adaLN-Zero (sec. 3.2): from c a zero-initialised Dense regresses
shift, scale and a gate for the attention and the MLP branch,
  x = x + gate_msa * Attn(LN(x) (1 + scale_msa) + shift_msa),
  x = x + gate_mlp * MLP(LN(x) (1 + scale_mlp) + shift_mlp),
so that every block starts as the identity. The final layer (adaptive LN, a
zero-initialised linear map to p p C_out) is unpatchified back to
[B, H, W, C_out]: C_out = 2 C with learn_sigma (the prediction, then the
variance interpolation of Nichol & Dhariwal 2021), else C. At
initialisation the output is exactly zero.

Sizes (Table 1): S, B, L, XL with patch 2, 4, 8 in `DIT_SIZES`; DiT-XL/2 on
32x32x4 latents with 1000 classes has 675M parameters: 674,834,720 here, the
675,129,632 of DiT's code less its frozen position embedding (256 x 1152),
which is a constant here, not a parameter. Time input: see
`jaxdiff.models.layers` (time_scale = 1000 for the paper's 1000-step DDPM).
"""

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxdiff.models import layers

_WIDTHS = {  # Peebles & Xie 2023, Table 1: layers, hidden width, heads.
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
# "S/2", "S/4", ..., "XL/8": each width with patch size 2, 4 or 8.
DIT_SIZES = {f"{name}/{p}": dict(**width, patch_size=p)
             for name, width in _WIDTHS.items() for p in (2, 4, 8)}

# A fused qkv Linear(D, 3D) under Xavier-uniform has bound sqrt(6 / 4D); separate q, k, v
# kernels [D, D] get the same distribution from fan_avg scaling 1/2.
_QKV_INIT = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
# The patch embedding is initialised as a Linear(p p C, D) (DiT's initialize_weights).
_PATCH_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2))


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int):
  """Fixed 2-D sin-cos position embedding [grid_h * grid_w, dim], rows in row-major order.

  The first dim/2 features encode the column, the last dim/2 the row, each as
  [sin, cos] of position * 10000^(-k / (dim / 4)) (MAE's layout, used by DiT).
  """
  if dim % 4:
    raise ValueError(f"the 2-D position embedding needs a width divisible by 4, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # [dim / 4]
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")

  def one_axis(pos):
    args = pos.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)  # [N, dim / 2]

  return np.concatenate([one_axis(cols), one_axis(rows)], axis=1).astype(np.float32)


def _layer_norm(eps, dtype):
  """LayerNorm without affine parameters (adaLN supplies them)."""
  return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, dtype=dtype)


def _modulate(x, shift, scale):
  """adaLN: x [B, N, D] shifted and scaled per example by [B, D]."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
  """One adaLN-Zero transformer block: x [B, N, D], c [B, D] -> [B, N, D]."""
  num_heads: int
  mlp_ratio: float
  norm_eps: float
  mlp_norm_eps: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, c):
    D = x.shape[-1]
    dense = lambda features, name, init=layers.xavier_uniform: nn.Dense(
        features, kernel_init=init, dtype=self.dtype, name=name)
    modulation = dense(6 * D, "adaLN_modulation", layers.zeros)(nn.swish(c))  # [B, 6 D]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation, 6, -1)
    h = _modulate(_layer_norm(self.norm_eps, self.dtype)(x), shift_msa, scale_msa)
    h = layers.Attention(self.num_heads, qkv_init=_QKV_INIT, dtype=self.dtype, name="attn")(h)
    x = x + gate_msa[:, None, :] * h
    h = _modulate(_layer_norm(self.mlp_norm_eps, self.dtype)(x), shift_mlp, scale_mlp)
    h = dense(int(D * self.mlp_ratio), "mlp_fc1")(h)
    h = dense(D, "mlp_fc2")(nn.gelu(h, approximate=True))
    return x + gate_mlp[:, None, :] * h


class DiT(nn.Module):
  """Diffusion Transformer; defaults are DiT-XL/2 for 1000 classes (see `dit` for sizes).

  Attributes:
    depth, hidden_size, num_heads, patch_size: the size (Table 1).
    mlp_ratio: MLP width / hidden width.
    in_channels: input channels (checked against x).
    learn_sigma: output 2 in_channels (prediction, variance) instead of in_channels.
    num_classes: number of classes (id num_classes is the null class), or None
      for an unconditional model.
    class_dropout: probability of the null class while training (sec. 3.1's
      classifier-free guidance training, 0.1).
    frequency_dim: sinusoidal features of the time embedding (256).
    time_scale, time_shift: the embedding sees time_scale t + time_shift.
    time_freq_shift: `layers.timestep_embedding`'s freq_shift; 0 in DiT's
      code, 1 in diffusers' DiTTransformer2DModel.
    norm_eps: LayerNorm epsilon (1e-6); mlp_norm_eps: that of the norm before
      the MLP, None meaning norm_eps (diffusers uses its norm_eps, 1e-5).
    dtype: compute dtype; parameters stay float32.
    remat: rematerialise the blocks in the backward pass.
  """
  depth: int = 28
  hidden_size: int = 1152
  num_heads: int = 16
  patch_size: int = 2
  mlp_ratio: float = 4.0
  in_channels: int = 4
  learn_sigma: bool = True
  num_classes: int | None = 1000
  class_dropout: float = 0.1
  frequency_dim: int = 256
  time_scale: float = 1000.0
  time_shift: float = 0.0
  time_freq_shift: float = 0.0
  norm_eps: float = 1e-6
  mlp_norm_eps: float | None = None
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def describe(self) -> str:
    """A short description of the configuration, for error messages."""
    return (f"DiT(depth={self.depth}, hidden_size={self.hidden_size}, "
            f"patch_size={self.patch_size}, in_channels={self.in_channels}, "
            f"num_classes={self.num_classes})")

  @nn.compact
  def __call__(self, x, t, cond=None, *, deterministic: bool):
    """Network output for x_t.

    Args:
      x: [B, H, W, in_channels], H and W multiples of patch_size.
      t: [B] (or scalar) process time.
      cond: [B] class ids in [0, num_classes] (None: the null class); None for
        an unconditional model.
      deterministic: True disables class dropout; False needs the "dropout" rng.

    Returns:
      [B, H, W, 2 in_channels if learn_sigma else in_channels] in float32.
    """
    p = self.patch_size
    layers.check_images(x, self.in_channels, p, self.describe(), "the patch size")
    B, gh, gw = x.shape[0], x.shape[1] // p, x.shape[2] // p
    D = self.hidden_size
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))

    # Patchify + fixed position embedding: [B, N, D], N = gh gw.
    h = nn.Conv(D, (p, p), strides=(p, p), padding="VALID", kernel_init=_PATCH_INIT,
                dtype=self.dtype, name="patch_embed")(x.astype(self.dtype))
    h = h.reshape(B, gh * gw, D) + sincos_pos_embed(D, gh, gw).astype(self.dtype)

    # Condition c = embed(t) + embed(y): [B, D].
    c = layers.TimeEmbedding(D, self.frequency_dim, self.time_scale, self.time_shift,
                             freq_shift=self.time_freq_shift, flip_sin_to_cos=True,
                             kernel_init=nn.initializers.normal(0.02), dtype=self.dtype,
                             name="t_embed")(t)
    c = layers.add_class_embedding(c, cond, self.num_classes, self.class_dropout,
                                   deterministic=deterministic, config=self.describe(),
                                   name="y_embed")

    # adaLN-Zero blocks.
    block_cls = layers.remat_if(DiTBlock, self.remat, static_argnums=())
    mlp_norm_eps = self.norm_eps if self.mlp_norm_eps is None else self.mlp_norm_eps
    for i in range(self.depth):
      h = block_cls(self.num_heads, self.mlp_ratio, self.norm_eps, mlp_norm_eps, self.dtype,
                    name=f"block_{i}")(h, c)

    # Final layer: adaptive LN and a zero-initialised projection to p p C_out, unpatchified.
    out_ch = 2 * self.in_channels if self.learn_sigma else self.in_channels
    shift, scale = jnp.split(nn.Dense(2 * D, kernel_init=layers.zeros, dtype=self.dtype,
                                      name="final_adaLN_modulation")(nn.swish(c)), 2, -1)
    h = _modulate(_layer_norm(self.norm_eps, self.dtype)(h), shift, scale)
    h = nn.Dense(p * p * out_ch, kernel_init=layers.zeros, dtype=self.dtype,
                 name="final_linear")(h)  # [B, N, p p C_out]
    h = h.reshape(B, gh, gw, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(B, gh * p, gw * p, out_ch).astype(jnp.float32)


def dit(size: str, **overrides) -> DiT:
  """The DiT of a named size, e.g. dit("XL/2", num_classes=1000, in_channels=4)."""
  if size not in DIT_SIZES:
    raise ValueError(f"unknown DiT size {size!r}; valid: {list(DIT_SIZES)}")
  return DiT(**DIT_SIZES[size], **overrides)
