"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3
and app. G), a Flax module with the architecture of diffusers' `AutoencoderKL`.

It is the convolutional autoencoder of VQGAN (Esser et al. 2021, sec. 3.2)
without the quantiser: the encoder maps an image x [B, H, W, C] in [-1, 1]
to the mean and log-variance of a diagonal Gaussian posterior
q(z | x) = N(mean, exp(logvar)) on a latent grid f = 2^(levels - 1) times
smaller, and the decoder maps a latent z back to an image. Training adds a
small KL(q(z | x) || N(0, I)) to the reconstruction loss (Rombach et al.,
sec. 3, "KL-reg."); the losses live outside this module.

Structure, for block_out_channels (c_0 .. c_{L-1}), N = layers_per_block:
  encoder: conv_in; per level l a DownEncoderBlock2D of N ResNet blocks to
  width c_l and, except at the last level, a stride-2 3x3 convolution on the
  input padded by one pixel at the bottom and right only; the mid block
  (ResNet block, single-head self-attention, ResNet block); GroupNorm, swish,
  conv_out to 2 latent_channels; quant_conv (1x1) -> [mean, logvar].
  decoder: post_quant_conv (1x1); conv_in to c_{L-1}; the mid block; per
  level, deepest first, an UpDecoderBlock2D of N + 1 ResNet blocks and,
  except at the last, a nearest-neighbour 2x upsample and 3x3 convolution;
  GroupNorm, swish, conv_out.
ResNet blocks are Ho et al.'s without the time input (GroupNorm, swish, conv,
twice; a 1x1 convolution on the shortcut where the width changes); every
GroupNorm has epsilon 1e-6. The log-variance is clipped to [-30, 20] as by
diffusers' DiagonalGaussianDistribution.

Submodules carry diffusers' names ("encoder/down_blocks_0/resnets_1/conv1"
is diffusers' "encoder.down_blocks.0.resnets.1.conv1"), so the import in
`jaxdiff.weights` is a renaming. Initialisation: diffusers uses PyTorch's
defaults; here the kernels are Flax's default LeCun normal with zero biases,
and the mid block's attention output projection starts at zero (the
`unet.AttnBlock` it shares with the U-Net), so attention starts as the
identity.

`scaling_factor` (and `shift_factor`) are carried from the configuration
but not applied: a latent diffusion model sees (z - shift) * scaling, and
its samples are decoded as decode(z / scaling + shift).
"""

import jax.numpy as jnp
from flax import linen as nn

from jaxdiff.models import layers
from jaxdiff.models.unet import AttnBlock, upsample_nearest

NORM_EPS = 1e-6  # Every GroupNorm of diffusers' Encoder and Decoder.
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp.


def _conv(features: int, dtype, name: str | None, kernel: int = 3):
  """A kernel x kernel convolution of stride 1 keeping H and W (diffusers' padding 1 or 0)."""
  return nn.Conv(features, (kernel, kernel), padding="SAME", dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  """x [B, H, W, C] -> [B, H, W, out_ch]: x + conv(swish(norm(conv(swish(norm(x)))))),
  x through a 1x1 convolution when C != out_ch (diffusers' ResnetBlock2D, no time input)."""
  out_ch: int
  num_groups: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.GroupNorm(self.num_groups, epsilon=NORM_EPS, dtype=self.dtype,
                                     name=name)
    h = _conv(self.out_ch, self.dtype, "conv1")(nn.swish(norm("norm1")(x)))
    h = _conv(self.out_ch, self.dtype, "conv2")(nn.swish(norm("norm2")(h)))
    if x.shape[-1] != self.out_ch:
      x = _conv(self.out_ch, self.dtype, "conv_shortcut", kernel=1)(x)
    return x + h


class MidBlock(nn.Module):
  """ResNet block, single-head self-attention over the H W positions, ResNet block
  (diffusers' UNetMidBlock2D with temb None); [B, H, W, C] -> same."""
  num_groups: int
  add_attention: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    C = x.shape[-1]
    x = ResnetBlock(C, self.num_groups, self.dtype, name="resnets_0")(x)
    if self.add_attention:
      x = AttnBlock(num_heads=1, num_groups=self.num_groups, norm_eps=NORM_EPS, dtype=self.dtype,
                    name="attentions_0")(x)
    return ResnetBlock(C, self.num_groups, self.dtype, name="resnets_1")(x)


class DownEncoderBlock(nn.Module):
  """layers_per_block ResNet blocks to width out_ch, then (if downsample) diffusers'
  Downsample2D(padding=0): pad bottom and right by one pixel, 3x3 conv of stride 2."""
  out_ch: int
  num_layers: int
  downsample: bool
  num_groups: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, h):
    for i in range(self.num_layers):
      h = ResnetBlock(self.out_ch, self.num_groups, self.dtype, name=f"resnets_{i}")(h)
    if self.downsample:  # [B, H, W, C] -> [B, H/2, W/2, C]
      h = nn.Conv(self.out_ch, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                  dtype=self.dtype, name="downsamplers_0")(h)
    return h


class UpDecoderBlock(nn.Module):
  """num_layers ResNet blocks to width out_ch, then (if upsample) diffusers' Upsample2D:
  nearest-neighbour 2x, 3x3 conv."""
  out_ch: int
  num_layers: int
  upsample: bool
  num_groups: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, h):
    for i in range(self.num_layers):
      h = ResnetBlock(self.out_ch, self.num_groups, self.dtype, name=f"resnets_{i}")(h)
    if self.upsample:  # [B, H, W, C] -> [B, 2H, 2W, C]
      h = _conv(self.out_ch, self.dtype, "upsamplers_0")(upsample_nearest(h))
    return h


class Encoder(nn.Module):
  """x [B, H, W, C] -> [B, H/f, W/f, 2 latent_channels] (before quant_conv)."""
  block_out_channels: tuple
  layers_per_block: int
  latent_channels: int
  num_groups: int
  add_attention: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    widths = self.block_out_channels
    h = _conv(widths[0], self.dtype, "conv_in")(x)
    for level, width in enumerate(widths):
      h = DownEncoderBlock(width, self.layers_per_block, level < len(widths) - 1,
                           self.num_groups, self.dtype, name=f"down_blocks_{level}")(h)
    h = MidBlock(self.num_groups, self.add_attention, self.dtype, name="mid_block")(h)
    h = nn.swish(nn.GroupNorm(self.num_groups, epsilon=NORM_EPS, dtype=self.dtype,
                              name="conv_norm_out")(h))
    return _conv(2 * self.latent_channels, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
  """z [B, h, w, latent_channels] (after post_quant_conv) -> [B, h f, w f, out_channels]."""
  block_out_channels: tuple
  layers_per_block: int
  out_channels: int
  num_groups: int
  add_attention: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, z):
    widths = tuple(reversed(self.block_out_channels))
    h = _conv(widths[0], self.dtype, "conv_in")(z)
    h = MidBlock(self.num_groups, self.add_attention, self.dtype, name="mid_block")(h)
    for i, width in enumerate(widths):  # Deepest level first, as diffusers' up_blocks.
      h = UpDecoderBlock(width, self.layers_per_block + 1, i < len(widths) - 1,
                         self.num_groups, self.dtype, name=f"up_blocks_{i}")(h)
    h = nn.swish(nn.GroupNorm(self.num_groups, epsilon=NORM_EPS, dtype=self.dtype,
                              name="conv_norm_out")(h))
    return _conv(self.out_channels, self.dtype, "conv_out")(h)


class AutoencoderKL(nn.Module):
  """The KL autoencoder; defaults are diffusers' AutoencoderKL defaults (one level of
  width 64). Stable Diffusion's VAE: block_out_channels=(128, 256, 512, 512),
  layers_per_block=2 (f = 8, 4 latent channels).

  Attributes:
    in_channels, out_channels: image channels in and out (out None: in_channels).
    block_out_channels: width of each level; f = 2 ** (levels - 1).
    layers_per_block: ResNet blocks per encoder level (the decoder has one more).
    latent_channels: channels of z.
    norm_num_groups: groups of every GroupNorm.
    mid_block_add_attention: self-attention in the encoder's and decoder's mid blocks.
    use_quant_conv, use_post_quant_conv: the 1x1 convolutions after the encoder and
      before the decoder.
    scaling_factor, shift_factor: from the configuration, not applied here (module
      docstring).
  """
  in_channels: int = 3
  out_channels: int | None = None
  block_out_channels: tuple = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  mid_block_add_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    widths = tuple(self.block_out_channels)
    if not widths or any(w % self.norm_num_groups for w in widths):
      raise ValueError(f"{self.describe()}: every block_out_channels must be a multiple of "
                       f"norm_num_groups={self.norm_num_groups}, got {widths}")
    self.encoder = Encoder(widths, self.layers_per_block, self.latent_channels,
                           self.norm_num_groups, self.mid_block_add_attention, self.dtype)
    self.decoder = Decoder(widths, self.layers_per_block,
                           self.out_channels or self.in_channels, self.norm_num_groups,
                           self.mid_block_add_attention, self.dtype)
    self.quant_conv = (_conv(2 * self.latent_channels, self.dtype, None, kernel=1)
                       if self.use_quant_conv else None)
    self.post_quant_conv = (_conv(self.latent_channels, self.dtype, None, kernel=1)
                            if self.use_post_quant_conv else None)

  @property
  def downsampling_factor(self) -> int:
    """f: the encoder halves the resolution once per level but the last."""
    return 2 ** (len(self.block_out_channels) - 1)

  def describe(self) -> str:
    """A short description of the configuration, for error messages."""
    return (f"AutoencoderKL(block_out_channels={tuple(self.block_out_channels)}, "
            f"layers_per_block={self.layers_per_block}, in_channels={self.in_channels}, "
            f"latent_channels={self.latent_channels})")

  def latent_shape(self, image_shape) -> tuple:
    """(H, W, C) of an image -> (H / f, W / f, latent_channels) of its latents.

    Raises:
      ValueError naming the sizes unless f divides H and W.
    """
    H, W = image_shape[0], image_shape[1]
    f = self.downsampling_factor
    if H % f or W % f:
      raise ValueError(f"{self.describe()} downsamples by f={f}: image height and width must "
                       f"be multiples of {f}, got {H}x{W}")
    return (H // f, W // f, self.latent_channels)

  def encode(self, x):
    """x [B, H, W, in_channels] in [-1, 1] -> (mean, logvar) of q(z | x), each
    [B, H/f, W/f, latent_channels]; logvar clipped to [-30, 20]."""
    layers.check_images(x, self.in_channels, self.downsampling_factor, self.describe(),
                        "the encoder downsamples by it")
    moments = self.encoder(x.astype(self.dtype))  # [B, h, w, 2 latent_channels]
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z):
    """Unscaled latents z [B, h, w, latent_channels] -> images [B, h f, w f, out_channels]."""
    layers.check_images(z, self.latent_channels, 1, self.describe(), "")
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z.astype(self.dtype))
    return self.decoder(z.astype(self.dtype))

  def __call__(self, x, eps=None, *, deterministic: bool = True):
    """x [B, H, W, C] -> (reconstruction [B, H, W, out_channels], mean, logvar).

    z = mean + exp(logvar / 2) eps (the reparameterisation of Kingma & Welling 2014,
    eq. 10) with eps [B, h, w, latent_channels] ~ N(0, I) given by the caller, or
    z = mean (the posterior's mode) when eps is None. `deterministic` is the train
    step's calling convention; the autoencoder has no dropout.
    """
    del deterministic
    mean, logvar = self.encode(x)
    z = mean if eps is None else mean + jnp.exp(logvar / 2) * eps
    return self.decode(z), mean, logvar
