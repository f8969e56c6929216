"""The DDPM U-Net (Ho et al. 2020, sec. 4 and app. B), a Flax module.

A PixelCNN++-style U-Net (Salimans et al. 2017) with wide-ResNet blocks
(Zagoruyko & Komodakis 2016), GroupNorm (Wu & He 2018) in place of weight
normalization, swish activations, self-attention at the 16x16 resolution, and
the time entering every residual block as a learned projection of a
sinusoidal embedding (Vaswani et al. 2017). Its CIFAR-10 configuration -- the
defaults below -- has 35,746,307 parameters, the count of Ho et al.'s
diffusion_tf/models/unet.py and of diffusers' UNet2DModel for
google/ddpm-cifar10-32.

Structure, for L = len(ch_mult) levels, level l of width ch * ch_mult[l]:
  conv_in; down: per level num_res_blocks ResBlocks (+ attention where the
  level's height is in attn_resolutions) and, except at the last level, a
  stride-2 downsample, every output kept as a skip; middle: ResBlock,
  attention, ResBlock; up: per level (deepest first) num_res_blocks + 1
  ResBlocks each fed [h, skip] concatenated (+ attention) and, except at
  level 0, a nearest-neighbour 2x upsample; GroupNorm, swish, conv_out.
As in Ho et al.'s code, kernels start Xavier-uniform (their default_init:
variance scaling, fan_avg, uniform) and biases at zero, while the last
convolution of every residual block, the attention output projection and
conv_out start at zero (their init_scale=0), so the network outputs exactly
zero at initialisation.

Additions beyond the paper: optional class conditioning (an embedding added
to the time embedding, as in Dhariwal & Nichol 2021, with a null class for
classifier-free guidance), any channel count, any resolution the multipliers
divide, bfloat16 compute with float32 parameters, and rematerialised residual
blocks. Time input: see `jaxdiff.models.layers` (time_scale = 1000 gives
Ho et al.'s integer-step scale for a 1000-step DiscreteDDPM).
"""

import jax.numpy as jnp
from flax import linen as nn

from jaxdiff.models import layers


class ResBlock(nn.Module):
  """x [B, H, W, C], temb [B, E] -> [B, H, W, out_ch] (Ho et al.'s resnet_block)."""
  out_ch: int
  dropout: float
  num_groups: int
  norm_eps: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, temb, deterministic):
    conv = lambda name, init=layers.xavier_uniform: nn.Conv(
        self.out_ch, (3, 3), padding="SAME", kernel_init=init, dtype=self.dtype, name=name)
    norm = lambda name: nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                                     name=name)
    h = conv("conv1")(nn.swish(norm("norm1")(x)))
    h = h + nn.Dense(self.out_ch, kernel_init=layers.xavier_uniform, dtype=self.dtype,
                     name="temb_proj")(nn.swish(temb))[:, None, None, :]
    h = nn.Dropout(self.dropout)(nn.swish(norm("norm2")(h)), deterministic=deterministic)
    h = conv("conv2", layers.zeros)(h)
    if x.shape[-1] != self.out_ch:  # 1x1 projection of the shortcut ("nin_shortcut").
      x = nn.Dense(self.out_ch, kernel_init=layers.xavier_uniform, dtype=self.dtype,
                   name="nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """x + single-head self-attention over the H W positions of GroupNorm(x): [B, H, W, C]."""
  num_groups: int
  norm_eps: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    h = nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype, name="norm")(x)
    h = layers.Attention(num_heads=1, out_init=layers.zeros, dtype=self.dtype, name="attn")(
        h.reshape(B, H * W, C))
    return x + h.reshape(B, H, W, C)


class UNet(nn.Module):
  """The DDPM U-Net; defaults are Ho et al.'s CIFAR-10 model (35,746,307 parameters).

  Attributes:
    ch: base width; level l has ch * ch_mult[l] channels.
    ch_mult: width multipliers, one per resolution level.
    num_res_blocks: residual blocks per level on the way down (one more up).
    attn_resolutions: heights (in pixels) of the levels that get attention.
    dropout: dropout rate inside the residual blocks.
    channels: input channels (checked against x).
    out_channels: output channels; None means `channels`.
    num_classes: None for an unconditional model, else the number of classes;
      class id num_classes is the null class (classifier-free guidance).
    class_dropout: probability of replacing a class id by the null id while
      training (deterministic=False).
    resamp_with_conv: 3x3 convolutions in the down/upsamplers (else average
      pooling / plain nearest-neighbour upsampling).
    num_groups, norm_eps: GroupNorm groups and epsilon (Ho et al.: 32, 1e-6).
    time_scale, time_shift: the embedding sees time_scale t + time_shift.
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    remat: rematerialise the residual blocks in the backward pass.
  """
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.1
  channels: int = 3
  out_channels: int | None = None
  num_classes: int | None = None
  class_dropout: float = 0.1
  resamp_with_conv: bool = True
  num_groups: int = 32
  norm_eps: float = 1e-6
  time_scale: float = 1000.0
  time_shift: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def describe(self) -> str:
    """A short description of the configuration, for error messages."""
    return (f"UNet(ch={self.ch}, ch_mult={tuple(self.ch_mult)}, channels={self.channels}, "
            f"num_classes={self.num_classes})")

  @nn.compact
  def __call__(self, x, t, cond=None, *, deterministic: bool):
    """Network output (e.g. eps) for x_t.

    Args:
      x: [B, H, W, channels] noisy images.
      t: [B] (or scalar) process time.
      cond: [B] integer class ids in [0, num_classes] (None: the null class);
        must be None for an unconditional model.
      deterministic: True disables dropout and class dropout (sampling);
        False needs the "dropout" rng.

    Returns:
      [B, H, W, out_channels] in float32.
    """
    levels = len(self.ch_mult)
    layers.check_images(x, self.channels, 2 ** (levels - 1), self.describe(),
                        f"it halves the resolution {levels - 1} times")
    B, H = x.shape[0], x.shape[1]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    kw = dict(num_groups=self.num_groups, norm_eps=self.norm_eps, dtype=self.dtype)
    block_cls = layers.remat_if(ResBlock, self.remat, static_argnums=(3,))
    res_block = lambda out_ch, name: block_cls(out_ch, self.dropout, name=name, **kw)
    conv = lambda features, name, init=layers.xavier_uniform, **conv_kw: nn.Conv(
        features, (3, 3), kernel_init=init, dtype=self.dtype, name=name, **conv_kw)

    # Time (and class) embedding [B, 4 ch].
    temb = layers.TimeEmbedding(4 * self.ch, self.ch, self.time_scale, self.time_shift,
                                freq_shift=1.0, flip_sin_to_cos=False, dtype=self.dtype,
                                name="time_embed")(t)
    temb = layers.add_class_embedding(temb, cond, self.num_classes, self.class_dropout,
                                      deterministic=deterministic, config=self.describe(),
                                      name="class_embed")

    # Downsampling; every output is a skip for the way up.
    hs = [conv(self.ch, "conv_in", padding="SAME")(x.astype(self.dtype))]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self.ch * mult, f"down_{level}_block_{i}")(hs[-1], temb, deterministic)
        if H >> level in self.attn_resolutions:
          h = AttnBlock(name=f"down_{level}_attn_{i}", **kw)(h)
        hs.append(h)
      if level != levels - 1:
        hs.append(self._downsample(hs[-1], conv, f"down_{level}_downsample"))

    # Middle.
    h = hs[-1]
    h = res_block(h.shape[-1], "mid_block_1")(h, temb, deterministic)
    h = AttnBlock(name="mid_attn", **kw)(h)
    h = res_block(h.shape[-1], "mid_block_2")(h, temb, deterministic)

    # Upsampling, consuming the skips in reverse.
    for level in reversed(range(levels)):
      for i in range(self.num_res_blocks + 1):
        h = res_block(self.ch * self.ch_mult[level], f"up_{level}_block_{i}")(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, deterministic)
        if H >> level in self.attn_resolutions:
          h = AttnBlock(name=f"up_{level}_attn_{i}", **kw)(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # Nearest-neighbour 2x.
        if self.resamp_with_conv:
          h = conv(h.shape[-1], f"up_{level}_upsample", padding="SAME")(h)

    # End: GroupNorm, swish, zero-initialised conv_out.
    h = nn.swish(nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                              name="norm_out")(h))
    out = conv(self.out_channels or self.channels, "conv_out", layers.zeros, padding="SAME")(h)
    return out.astype(jnp.float32)

  def _downsample(self, h, conv, name):
    """Halves H and W: [B, H, W, C] -> [B, H/2, W/2, C]."""
    if not self.resamp_with_conv:
      return nn.avg_pool(h, (2, 2), strides=(2, 2))
    # Stride-2 3x3 conv padded (0, 1) like TensorFlow's 'SAME' (Ho et al.; diffusers padding=0).
    return conv(h.shape[-1], name, strides=(2, 2), padding=((0, 1), (0, 1)))(h)
