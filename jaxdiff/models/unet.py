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

Options reaching the later U-Nets (the defaults switch them all off):
  num_heads, num_head_channels  multi-head attention (Dhariwal & Nichol 2021,
      "ADM", sec. 3: 4 heads, or 64 channels per head), at every resolution
      in attn_resolutions (ADM: 32, 16 and 8).
  scale_shift_norm  adaptive group normalization (ADM, sec. 3, AdaGN): the
      time (+ class) embedding e gives (y_s, y_b) = Dense(swish(e)) and the
      second norm of each residual block becomes
      GroupNorm(h) (1 + y_s) + y_b instead of GroupNorm(h + Dense(swish(e))).
  resblock_updown  BigGAN residual blocks for down/upsampling (Brock et al.
      2019; ADM, sec. 3; Song et al. 2021, "DDPM++", app. H): a
      residual block whose input is average-pooled (or nearest-upsampled) on
      both branches, after the first GroupNorm and swish, replaces the
      strided conv (or upsample + conv); its shortcut is the identity.
  skip_rescale  every residual sum (residual and attention blocks) is
      divided by sqrt(2) (Song et al. 2021, app. H); the concatenated U-Net
      skips are not rescaled, as in score_sde.
  time_embedding = "fourier"  random Gaussian Fourier features of
      s = time_scale t + time_shift (Tancik et al. 2020; Song et al. 2021's
      NCSN++, fourier_scale 16) instead of the sinusoid, 2 ch of them. For
      the VE process, log sigma(t) = log sigma_min + t log(sigma_max/sigma_min)
      is affine in t, so time_scale = log(sigma_max/sigma_min) and
      time_shift = log(sigma_min) embed score_sde's log sigma exactly.
  time_freq_shift, time_flip_sin_to_cos  the sinusoid's frequencies
      10000^(-k / (ch / 2 - time_freq_shift)) and its [sin, cos] order (see
      `layers.timestep_embedding`): Ho et al.'s 1 and [sin, cos] by default;
      diffusers' UNet2DModel defaults, those of the models its training
      scripts make, are 0 and [cos, sin] (flip_sin_to_cos=True).
  downsample_padding  the padding of the stride-2 3x3 downsampling conv:
      "same", none before and one pixel after in H and W (TensorFlow's 'SAME':
      Ho et al.; diffusers' downsample_padding=0), or "symmetric", one pixel on
      every side (diffusers' default downsample_padding=1). Both halve H and
      W, but the 3x3 windows sit one pixel apart.
ADM-style: num_head_channels=64, attn_resolutions=(32, 16, 8),
scale_shift_norm=True, resblock_updown=True. DDPM++-style: resblock_updown
and skip_rescale, num_res_blocks=4 (score_sde's NCSNpp differs in two
details kept out here: attention once per level on the way up, and a 1x1
convolution on the shortcut of its resampling blocks).
"""

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxdiff.models import layers

TIME_EMBEDDINGS = ("positional", "fourier")
# UNet.downsample_padding -> the (H, W) padding of the stride-2 3x3 downsampling conv.
DOWNSAMPLE_PADDINGS = {"same": ((0, 1), (0, 1)), "symmetric": ((1, 1), (1, 1))}


def upsample_nearest(h):
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2."""
  return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


def downsample_avg(h):
  """[B, H, W, C] -> [B, H/2, W/2, C], the mean of each 2x2 patch."""
  return nn.avg_pool(h, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
  """x [B, H, W, C], temb [B, E] -> [B, H', W', out_ch] (Ho et al.'s resnet_block).

  resample "down" / "up" makes it a BigGAN resampling block (H' = H/2 / 2H);
  scale_shift_norm and skip_rescale: see the module docstring.
  """
  out_ch: int
  dropout: float
  num_groups: int
  norm_eps: float
  dtype: jnp.dtype
  resample: str | None = None
  scale_shift_norm: bool = False
  skip_rescale: bool = False

  @nn.compact
  def __call__(self, x, temb, deterministic):
    conv = lambda name, init=layers.xavier_uniform: nn.Conv(
        self.out_ch, (3, 3), padding="SAME", kernel_init=init, dtype=self.dtype, name=name)
    norm = lambda name: nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                                     name=name)
    h = nn.swish(norm("norm1")(x))
    if self.resample:  # Both branches resampled, after the first norm (BigGAN).
      resample = {"down": downsample_avg, "up": upsample_nearest}[self.resample]
      x, h = resample(x), resample(h)
    h = conv("conv1")(h)
    emb = nn.Dense(self.out_ch * (2 if self.scale_shift_norm else 1),
                   kernel_init=layers.xavier_uniform, dtype=self.dtype,
                   name="temb_proj")(nn.swish(temb))[:, None, None, :]  # [B, 1, 1, out_ch (x2)]
    if self.scale_shift_norm:  # AdaGN: GroupNorm(h) (1 + y_s) + y_b.
      y_s, y_b = jnp.split(emb, 2, axis=-1)
      h = norm("norm2")(h) * (1 + y_s) + y_b
    else:
      h = norm("norm2")(h + emb)
    h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=deterministic)
    h = conv("conv2", layers.zeros)(h)
    if x.shape[-1] != self.out_ch:  # 1x1 projection of the shortcut ("nin_shortcut").
      x = nn.Dense(self.out_ch, kernel_init=layers.xavier_uniform, dtype=self.dtype,
                   name="nin_shortcut")(x)
    return (x + h) / np.sqrt(2) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
  """x + multi-head self-attention over the H W positions of GroupNorm(x): [B, H, W, C]."""
  num_heads: int
  num_groups: int
  norm_eps: float
  dtype: jnp.dtype
  skip_rescale: bool = False

  @nn.compact
  def __call__(self, x):
    B, H, W, C = x.shape
    h = nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype, name="norm")(x)
    h = layers.Attention(num_heads=self.num_heads, out_init=layers.zeros, dtype=self.dtype,
                         name="attn")(h.reshape(B, H * W, C)).reshape(B, H, W, C)
    return (x + h) / np.sqrt(2) if self.skip_rescale else x + h


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
      pooling / plain nearest-neighbour upsampling); unused with resblock_updown.
    num_groups, norm_eps: GroupNorm groups and epsilon (Ho et al.: 32, 1e-6).
    num_heads: attention heads (Ho et al.: 1), unless num_head_channels is set.
    num_head_channels: channels per attention head (ADM: 64), so that a block
      of width C has C / num_head_channels heads; None: use num_heads.
    scale_shift_norm: AdaGN in the residual blocks (ADM).
    resblock_updown: BigGAN residual blocks for down/upsampling (ADM, DDPM++).
    skip_rescale: residual sums divided by sqrt(2) (DDPM++).
    time_embedding: "positional" (sinusoid, Ho et al.) or "fourier" (random
      Gaussian Fourier features, NCSN++).
    fourier_scale: standard deviation of the Fourier frequencies (score_sde: 16).
    time_scale, time_shift: the embedding sees time_scale t + time_shift.
    time_freq_shift, time_flip_sin_to_cos: the sinusoid's convention (Ho et al.:
      1.0, False; diffusers' UNet2DModel defaults: 0.0, True); unused by "fourier".
    downsample_padding: "same" (Ho et al.) or "symmetric" (diffusers' default)
      padding of the strided downsampling conv; unused without resamp_with_conv
      or with resblock_updown.
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
  num_heads: int = 1
  num_head_channels: int | None = None
  scale_shift_norm: bool = False
  resblock_updown: bool = False
  skip_rescale: bool = False
  time_embedding: str = "positional"
  fourier_scale: float = 16.0
  time_scale: float = 1000.0
  time_shift: float = 0.0
  time_freq_shift: float = 1.0
  time_flip_sin_to_cos: bool = False
  downsample_padding: str = "same"
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def describe(self) -> str:
    """A short description of the configuration, for error messages."""
    return (f"UNet(ch={self.ch}, ch_mult={tuple(self.ch_mult)}, channels={self.channels}, "
            f"num_classes={self.num_classes})")

  def _heads(self, width: int) -> int:
    """Number of attention heads in a block of `width` channels."""
    if self.num_head_channels is None:
      field, divisor = "num_heads", self.num_heads
    else:
      field, divisor = "num_head_channels", self.num_head_channels
    if divisor < 1 or width % divisor:
      raise ValueError(f"{self.describe()} with {field}={divisor} cannot split its attention "
                       f"width {width} into equal heads: {field} must divide it")
    return self.num_heads if self.num_head_channels is None else width // divisor

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
    if self.time_embedding not in TIME_EMBEDDINGS:
      raise ValueError(f"{self.describe()}: time_embedding must be one of {TIME_EMBEDDINGS}, "
                       f"got {self.time_embedding!r}")
    if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
      raise ValueError(f"{self.describe()}: downsample_padding must be one of "
                       f"{list(DOWNSAMPLE_PADDINGS)}, got {self.downsample_padding!r}")
    B, H = x.shape[0], x.shape[1]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    kw = dict(num_groups=self.num_groups, norm_eps=self.norm_eps, dtype=self.dtype)
    block_cls = layers.remat_if(ResBlock, self.remat, static_argnums=(3,))
    res_block = lambda out_ch, name, resample=None: block_cls(
        out_ch, self.dropout, resample=resample, scale_shift_norm=self.scale_shift_norm,
        skip_rescale=self.skip_rescale, name=name, **kw)
    attn_block = lambda h, name: AttnBlock(self._heads(h.shape[-1]), skip_rescale=self.skip_rescale,
                                           name=name, **kw)(h)
    conv = lambda features, name, init=layers.xavier_uniform, **conv_kw: nn.Conv(
        features, (3, 3), kernel_init=init, dtype=self.dtype, name=name, **conv_kw)

    # Time (and class) embedding [B, 4 ch].
    fourier = self.time_embedding == "fourier"
    temb = layers.TimeEmbedding(4 * self.ch, 2 * self.ch if fourier else self.ch, self.time_scale,
                                self.time_shift, freq_shift=self.time_freq_shift,
                                flip_sin_to_cos=self.time_flip_sin_to_cos,
                                fourier_scale=self.fourier_scale if fourier else None,
                                dtype=self.dtype, name="time_embed")(t)
    temb = layers.add_class_embedding(temb, cond, self.num_classes, self.class_dropout,
                                      deterministic=deterministic, config=self.describe(),
                                      name="class_embed")

    # Downsampling; every output is a skip for the way up.
    hs = [conv(self.ch, "conv_in", padding="SAME")(x.astype(self.dtype))]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self.ch * mult, f"down_{level}_block_{i}")(hs[-1], temb, deterministic)
        if H >> level in self.attn_resolutions:
          h = attn_block(h, f"down_{level}_attn_{i}")
        hs.append(h)
      if level != levels - 1:
        name = f"down_{level}_downsample"
        if self.resblock_updown:
          hs.append(res_block(hs[-1].shape[-1], name, "down")(hs[-1], temb, deterministic))
        else:
          hs.append(self._downsample(hs[-1], conv, name))

    # Middle.
    h = hs[-1]
    h = res_block(h.shape[-1], "mid_block_1")(h, temb, deterministic)
    h = attn_block(h, "mid_attn")
    h = res_block(h.shape[-1], "mid_block_2")(h, temb, deterministic)

    # Upsampling, consuming the skips in reverse.
    for level in reversed(range(levels)):
      for i in range(self.num_res_blocks + 1):
        h = res_block(self.ch * self.ch_mult[level], f"up_{level}_block_{i}")(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, deterministic)
        if H >> level in self.attn_resolutions:
          h = attn_block(h, f"up_{level}_attn_{i}")
      if level != 0:
        name = f"up_{level}_upsample"
        if self.resblock_updown:
          h = res_block(h.shape[-1], name, "up")(h, temb, deterministic)
        else:
          h = upsample_nearest(h)
          if self.resamp_with_conv:
            h = conv(h.shape[-1], name, padding="SAME")(h)

    # End: GroupNorm, swish, zero-initialised conv_out.
    h = nn.swish(nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                              name="norm_out")(h))
    out = conv(self.out_channels or self.channels, "conv_out", layers.zeros, padding="SAME")(h)
    return out.astype(jnp.float32)

  def _downsample(self, h, conv, name):
    """Halves H and W: [B, H, W, C] -> [B, H/2, W/2, C]."""
    if not self.resamp_with_conv:
      return downsample_avg(h)
    # Stride-2 3x3 conv, padded as DOWNSAMPLE_PADDINGS says.
    return conv(h.shape[-1], name, strides=(2, 2),
                padding=DOWNSAMPLE_PADDINGS[self.downsample_padding])(h)
