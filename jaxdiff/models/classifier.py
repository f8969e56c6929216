"""A small convolutional image classifier: the feature network of `jaxdiff.evaluation`.

Generated images are judged in the feature space of a classifier trained on
the real data, as Heusel et al. (2017) use Inception-v3's pool3 features for
the Frechet Inception Distance and Salimans et al. (2016) its class
probabilities for the Inception Score. Inception-v3 was trained on 299x299
ImageNet photographs; for 8x8 digits or 28x28 Fashion-MNIST a network trained
on the dataset itself is the meaningful judge, in the spirit of LeCun et al.
(1998, LeNet-5): blocks of two 3x3 convolutions and a 2x2 average pool, then
a dense feature layer and the logits.

  x [B, H, W, C] in [-1, 1]
  -> per width in `channels`: conv 3x3, ReLU, conv 3x3, ReLU, avg-pool 2x2
  -> flatten -> Dense(features), ReLU     = the features [B, features]
  -> dropout (training only) -> Dense(num_classes) = the logits [B, num_classes]

The features are the ReLU activations feeding the logits (the penultimate
layer), as Inception's pool3 features are. Flattening rather than global
pooling keeps where a stroke is, which separates digits; each image size gets
its own first dense layer, so any H and W divisible by 2^len(channels) work
(8x8 and 28x28 with the two default blocks).

`NoisyClassifier` is the other kind: p_phi(y | x_t, t), trained on noised data
for classifier guidance (Dhariwal & Nichol 2021, sec. 4; their classifier is
the U-Net's downsampling half, here a few layers). Its time input (by
`classifier_guidance`: ln(sigma / alpha) / 4) enters as in the denoising
networks, `layers.TimeEmbedding` of time_scale t + time_shift,
projected to each layer's width and added before its nonlinearity (as the
U-Net's residual blocks add it):

  x_t [B, H, W, C] (images)            x_t [B, D] (points)
  -> per width in `channels`:          -> per width in `channels`:
     swish(conv 3x3 + Dense(temb)),       swish(Dense + Dense(temb))
     avg-pool 2x2
  -> flatten -> swish(Dense(features) + temb) -> Dense(num_classes) = logits
"""

import jax.numpy as jnp
from flax import linen as nn

from jaxdiff.models import layers


class Classifier(nn.Module):
  """x [B, H, W, C] in [-1, 1] -> (logits [B, num_classes], features [B, features]).

  Attributes:
    num_classes: number of classes.
    channels: width of each convolution block; each block halves H and W.
    features: width of the penultimate (feature) layer.
    dropout: dropout rate on the features before the logits, in training only.
  """
  num_classes: int = 10
  channels: tuple[int, ...] = (32, 64)
  features: int = 32
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Args: x [B, H, W, C]; train: dropout on (needs a "dropout" rng) or off.

    Returns: logits [B, num_classes], features [B, features].
    """
    blocks = len(self.channels)
    if x.ndim != 4 or x.shape[1] % 2**blocks or x.shape[2] % 2**blocks:
      raise ValueError(f"Classifier takes images [B, H, W, C] with H and W divisible by "
                       f"2^{blocks} = {2**blocks} (one halving per block of channels="
                       f"{self.channels}), got shape {x.shape}")
    h = x
    for width in self.channels:
      h = nn.relu(nn.Conv(width, (3, 3))(h))
      h = nn.relu(nn.Conv(width, (3, 3))(h))
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))  # [B, H', W', width], H' and W' halved
    features = nn.relu(nn.Dense(self.features)(jnp.reshape(h, (h.shape[0], -1))))  # [B, F]
    h = nn.Dropout(self.dropout, deterministic=not train)(features)
    return nn.Dense(self.num_classes)(h), features


class NoisyClassifier(nn.Module):
  """(x_t [B, H, W, C] or [B, D], t [B]) -> logits [B, num_classes] of p_phi(y | x_t, t).

  Images go through 3x3 convolutions, points through dense layers, chosen by
  the rank of x_t.

  Attributes:
    num_classes: number of classes.
    channels: width of each layer; for images each also halves H and W.
    features: width of the time embedding and of the penultimate layer.
    time_scale, time_shift: the embedding sees time_scale t + time_shift
      (`layers`' time input convention).
  """
  num_classes: int = 10
  channels: tuple[int, ...] = (32, 64)
  features: int = 64
  time_scale: float = 1.0
  time_shift: float = 0.0

  @nn.compact
  def __call__(self, x_t, t):
    """Args: x_t [B, H, W, C] (H, W divisible by 2^len(channels)) or [B, D]; t scalar or [B].

    Returns: logits [B, num_classes].
    """
    blocks = len(self.channels)
    images = x_t.ndim == 4
    if not (x_t.ndim == 2 or images and x_t.shape[1] % 2**blocks == x_t.shape[2] % 2**blocks == 0):
      raise ValueError(f"NoisyClassifier takes points [B, D] or images [B, H, W, C] with H and W "
                       f"divisible by 2^{blocks} = {2**blocks} (one halving per entry of "
                       f"channels={self.channels}), got shape {x_t.shape}")
    B = x_t.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    temb = layers.TimeEmbedding(self.features, self.features, self.time_scale, self.time_shift,
                                freq_shift=1.0, flip_sin_to_cos=False, name="time_embed")(t)
    h = x_t
    for i, width in enumerate(self.channels):
      layer = (nn.Conv(width, (3, 3), name=f"layer_{i}") if images
               else nn.Dense(width, name=f"layer_{i}"))
      shift = nn.Dense(width, name=f"time_{i}")(temb)  # [B, width]
      h = nn.swish(layer(h) + (shift[:, None, None, :] if images else shift))
      if images:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))  # [B, H', W', width], H' and W' halved
    h = nn.swish(nn.Dense(self.features, name="penultimate")(h.reshape(B, -1)) + temb)
    return nn.Dense(self.num_classes, name="logits")(h)  # [B, num_classes]
