"""Building blocks shared by the networks (`unet`, `dit`).

  timestep_embedding  sinusoidal features of a scalar time per example
                      (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, app. B)
  fourier_features    random Gaussian Fourier features (Tancik et al. 2020;
                      Song et al. 2021's NCSN++: scale 16)
  TimeEmbedding       time input convention + sinusoid or Fourier features +
                      2-layer MLP
  LabelEmbedding      class ids -> vectors, with a null class for classifier-free
                      guidance and condition dropout (Ho & Salimans 2022, sec. 3.2;
                      Peebles & Xie 2023, sec. 3.1)
  Attention           multi-head self-attention over tokens [B, N, C]

Time input convention. Every network takes the process's continuous time
t [B] and embeds s = time_scale * t + time_shift. For a `DiscreteDDPM` with T
steps, step i sits at t = i / T, while Ho et al.'s code and diffusers index the
same step by the integer n = i - 1 = T t - 1; so time_scale = T, time_shift =
-1 makes the embedding see exactly their integer n (the setting used when
importing their weights, see `jaxdiff.weights`), and time_shift = 0 (the
default for models trained here) sees i = T t.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

xavier_uniform = nn.initializers.xavier_uniform()  # Ho et al.'s default_init(1), DiT's basic init
zeros = nn.initializers.zeros


def concrete(x):
  """x as a numpy array, or None where it is traced (inside jit) and cannot be checked."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def timestep_embedding(s, dim: int, *, freq_shift: float, flip_sin_to_cos: bool,
                       max_period: float = 10000.0):
  """Sinusoidal features of s [B]: [B, dim].

  Frequencies are max_period^(-k / (dim / 2 - freq_shift)), k = 0 .. dim/2 - 1;
  the features are [sin, cos] of s times them, or [cos, sin] when flipped.
  Ho et al. (and diffusers' DDPM U-Nets) use freq_shift = 1, [sin, cos];
  DiT uses freq_shift = 0, [cos, sin].
  """
  if dim % 2:
    raise ValueError(f"timestep embedding dimension must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = s.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  sin, cos = jnp.sin(args), jnp.cos(args)
  return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


def fourier_features(s, W):
  """Gaussian Fourier features of s [B] with frequencies W [dim / 2]: [B, dim].

  [sin(2 pi W s), cos(2 pi W s)], W drawn once from N(0, scale^2) and kept
  fixed (Tancik et al. 2020, their B; score_sde's GaussianFourierProjection,
  which embeds s = log sigma for VE models).
  """
  args = 2 * np.pi * s.astype(jnp.float32)[:, None] * W[None, :]  # [B, dim / 2]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def check_images(x, channels: int, multiple: int, config: str, reason: str):
  """Raises ValueError, naming the configuration, unless x is [B, H, W, channels] with H
  and W multiples of `multiple`."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{config} takes inputs [B, H, W, {channels}], got shape {x.shape}")
  if x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(f"{config} needs H and W to be multiples of {multiple} ({reason}); "
                     f"got {x.shape[1]}x{x.shape[2]}")


class TimeEmbedding(nn.Module):
  """t [B] -> [B, features]: features of s = time_scale t + time_shift, Dense, swish, Dense.

  Attributes:
    features: width of the MLP and of the output.
    frequency_dim: number of sinusoidal (or Fourier) features fed to the MLP.
    time_scale, time_shift: the time input convention (module docstring).
    freq_shift, flip_sin_to_cos: see `timestep_embedding`.
    fourier_scale: None for the sinusoid; else the standard deviation of the
      frequencies W of `fourier_features`, a parameter "W" [frequency_dim / 2]
      whose gradient is stopped (fixed after init, as in score_sde; exclude it
      from weight decay).
    kernel_init: init of both Dense kernels.
  """
  features: int
  frequency_dim: int
  time_scale: float
  time_shift: float
  freq_shift: float
  flip_sin_to_cos: bool
  fourier_scale: float | None = None
  kernel_init: nn.initializers.Initializer = xavier_uniform
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
      raise ValueError(f"t must be a per-example vector [B], got shape {t.shape}")
    s = self.time_scale * t + self.time_shift  # [B]
    if self.fourier_scale is None:
      emb = timestep_embedding(s, self.frequency_dim, freq_shift=self.freq_shift,
                               flip_sin_to_cos=self.flip_sin_to_cos)
    else:
      if self.frequency_dim % 2:
        raise ValueError(f"Fourier embedding dimension must be even, got {self.frequency_dim}")
      W = self.param("W", nn.initializers.normal(self.fourier_scale), (self.frequency_dim // 2,))
      emb = fourier_features(s, jax.lax.stop_gradient(W))
    emb = emb.astype(self.dtype)  # [B, frequency_dim]
    dense = lambda name: nn.Dense(self.features, kernel_init=self.kernel_init, dtype=self.dtype,
                                  name=name)
    return dense("dense1")(nn.swish(dense("dense0")(emb)))  # [B, features]


class LabelEmbedding(nn.Module):
  """Class ids [B] -> [B, features], with the null class id = num_classes.

  The table has num_classes + 1 rows; row num_classes is the "no class" token
  used by classifier-free guidance. cond = None means every example is
  unconditional. While training (deterministic=False) each id is replaced by
  the null id with probability `dropout` (rng stream "dropout"), so one network
  learns both the conditional and the unconditional model.
  """
  num_classes: int
  features: int
  dropout: float = 0.1
  embedding_init: nn.initializers.Initializer = nn.initializers.normal(0.02)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, y, batch: int, *, deterministic: bool, config: str):
    if y is None:
      y = jnp.full((batch,), self.num_classes, jnp.int32)
    y = jnp.asarray(y)
    if y.shape != (batch,) or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"{config}: class ids must be integers of shape ({batch},), "
                       f"got {y.dtype} {y.shape}")
    ids = concrete(y)
    if ids is not None and ids.size and (ids.min() < 0 or ids.max() > self.num_classes):
      raise ValueError(f"{config}: class ids must lie in [0, {self.num_classes}] "
                       f"({self.num_classes} is the null class); got [{ids.min()}, {ids.max()}]")
    if not deterministic and self.dropout > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.dropout, (batch,))
      y = jnp.where(drop, self.num_classes, y)
    table = nn.Embed(self.num_classes + 1, self.features, embedding_init=self.embedding_init,
                     dtype=self.dtype, name="embedding")
    return table(y)  # [B, features]


def add_class_embedding(emb, cond, num_classes: int | None, dropout: float, *,
                        deterministic: bool, config: str, name: str):
  """emb [B, E] plus the `LabelEmbedding` of cond, created as submodule `name` of the
  calling module; for num_classes None (an unconditional model) emb itself, and cond
  must be None."""
  if num_classes is None:
    if cond is not None:
      raise ValueError(f"{config} is unconditional (num_classes=None) but got a cond")
    return emb
  return emb + LabelEmbedding(num_classes, emb.shape[-1], dropout, dtype=emb.dtype, name=name)(
      cond, emb.shape[0], deterministic=deterministic, config=config)


class Attention(nn.Module):
  """Multi-head self-attention over tokens x [B, N, C] -> [B, N, C].

  Separate q, k, v projections, softmax(q k^T / sqrt(C / heads)) v, an output
  projection. Logits and softmax are computed in float32.
  """
  num_heads: int = 1
  qkv_init: nn.initializers.Initializer = xavier_uniform
  out_init: nn.initializers.Initializer = xavier_uniform
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    B, N, C = x.shape
    if C % self.num_heads:
      raise ValueError(f"attention width {C} is not divisible by num_heads={self.num_heads}")
    head = lambda name: nn.Dense(C, kernel_init=self.qkv_init, dtype=self.dtype, name=name)(
        x).reshape(B, N, self.num_heads, C // self.num_heads)  # [B, N, heads, C / heads]
    q, k, v = head("q"), head("k"), head("v")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / np.sqrt(C // self.num_heads), axis=-1).astype(v.dtype)
    h = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, N, C)
    return nn.Dense(C, kernel_init=self.out_init, dtype=self.dtype, name="out")(h)


def remat_if(module_cls, remat: bool, static_argnums):
  """module_cls wrapped in nn.remat (activations recomputed in the backward pass) if asked."""
  return nn.remat(module_cls, static_argnums=static_argnums) if remat else module_cls


def num_params(params) -> int:
  """Total number of parameters in a tree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
