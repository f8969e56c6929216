"""Inception-v3 as the FID feature network: the TF 2015-12-05 graph, as pytorch-fid ports it.

The Frechet Inception Distance (Heusel et al. 2017, eq. 6; `jaxdiff.metrics`)
compares the Gaussians fitted to the 2048-d pool3 features of Inception-v3
(Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer
Vision": table 1, with the blocks of fig. 5, 6, 7 and 10) for two sets of
images, and the Inception Score (Salimans et al. 2016) uses its class
probabilities. Published FIDs are computed with one particular network:
TensorFlow's inception-2015-12-05 graph, which has 1008 classes and differs
from torchvision's Inception-v3 in its pooling. pytorch-fid (Seitzer 2020)
ported it to PyTorch as
`pytorch_fid.inception.InceptionV3` with use_fid_inception=True: torchvision's
Inception3 with the blocks replaced by FIDInceptionA / C / E_1 / E_2. This
module is that network in Flax, NHWC, layer by layer:

  x [N, H, W, 3] in [-1, 1]; [N, H, W, 1] is repeated to 3 channels (a
      grayscale image as RGB, as pytorch-fid's PIL convert("RGB") reads it)
  -> resize to 299x299, bilinear, no antialiasing (resize=True)
  -> Conv2d_1a_3x3 (stride 2), 2a, 2b, max-pool 3x3/2, 3b (1x1), 4a, max-pool 3x3/2
                                                                    # [N, 35, 35, 192]
  -> Mixed_5b, 5c, 5d (FIDInceptionA)                               # [N, 35, 35, 288]
  -> Mixed_6a (InceptionB), 6b-6e (FIDInceptionC)                   # [N, 17, 17, 768]
  -> Mixed_7a (InceptionD), 7b (FIDInceptionE_1), 7c (FIDInceptionE_2)  # [N, 8, 8, 2048]
  -> mean over H, W: the pool3 features                             # [N, 2048]
  -> fc: the logits of the 1008 classes                             # [N, 1008]

Every convolution is torchvision's BasicConv2d: no bias, then batch norm with
eps = 0.001 and the stored running statistics, then ReLU. The FID blocks differ
from torchvision's in their pooling branch: the 3x3 average pools (stride 1,
padding 1) leave the padded zeros out of the average (count_include_pad=False,
as TF's pool does), and Mixed_7c's pooling branch is a 3x3 max pool, which
pytorch-fid notes is likely an error of the TF graph but keeps for comparable
FIDs. Resizing in [-1, 1] rather than in pytorch-fid's [0, 1] gives the same
image: bilinear weights sum to 1, so the map 2 x - 1 commutes with it.
jax.image.resize without antialiasing samples at (i + 1/2) in / out - 1/2 and
clamps at the borders, as PyTorch's interpolate(mode="bilinear",
align_corners=False) does, upsampling or downsampling (tested).

Weights. pytorch-fid's GitHub release tagged "fid_weights" (2019) holds the
port of TF's graph, pt_inception-2015-12-05-6726825d.pth (WEIGHTS_URL): a state
dict of torchvision's names and layouts, fc included. jaxdiff downloads
nothing; with the file at hand,

  variables = load_weights("pt_inception-2015-12-05-6726825d.pth")  # needs torch
  python3 -m jaxdiff.inception convert pt_inception-2015-12-05-6726825d.pth inception.npz
  variables = load_weights("inception.npz")                          # no torch

`load_weights` never unpickles arbitrary objects: a .pth goes through torch's
restricted unpickler (torch.load(weights_only=True)), an .npz through
np.load(allow_pickle=False). A .pth whose name carries a hash, "-<hex digits>."
as torch.hub names files, must have a SHA-256 starting with those digits
(6726825d for the release file). `convert` writes the same state dict (names and
PyTorch layouts) as an .npz, so later loads need no torch; `load_torch_state_dict`
maps names and layouts (OIHW convolutions to HWIO) in one place and names the
key of any tensor missing, left over or of the wrong shape.

  pool3, logits = features(variables, images)  # [N, 2048], [N, 1008]
"""

import argparse
import functools
import hashlib
import pathlib
import pickle
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from tqdm import tqdm

from jaxdiff import workdir
from jaxdiff.models.compiler import compiler_options

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
SIZE = 299  # The input size the network was trained at; pytorch-fid resizes to it.
MIN_SIZE = 75  # The smallest H and W that leave Mixed_7c a 1x1 map.
NUM_CLASSES = 1008
BATCH = 100  # Images per forward pass in `features`.
# Full float32 products in the convolutions and fc on every backend: JAX's default on recent
# GPUs rounds their inputs to TF32 (10 mantissa bits), and the features should not depend on
# the hardware. (PyTorch's own default lets cuDNN use TF32 for convolutions.)
PRECISION = "highest"
# A torch.hub file name's hash: "<name>-<first hex digits of the SHA-256>.<extension>".
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")
INSTALL_HINT = ("pip install torch (the CPU build suffices), or convert the file once where torch "
                "is installed: python3 -m jaxdiff.inception convert IN.pth OUT.npz, and load the "
                ".npz")


class BasicConv2d(nn.Module):
  """Convolution without bias, batch norm (eps 0.001, running statistics), ReLU."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)  # PyTorch's (pad H, pad W), on both sides.

  @nn.compact
  def __call__(self, x):
    (ph, pw), s = self.padding, self.strides
    x = nn.Conv(self.features, self.kernel_size, strides=(s, s), padding=((ph, ph), (pw, pw)),
                use_bias=False, precision=PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3 average, stride 1, padding 1, over the unpadded pixels only (TF's average pool)."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class FIDInceptionA(nn.Module):
  """35x35 block (fig. 5): 1x1, 5x5, double 3x3 and pooling branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    branch5x5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (fig. 10): strided 3x3, strided double 3x3 and max-pool branches."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
    branch3x3dbl = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """17x17 block (fig. 6): 7x7 convolutions factorized into 1x7 and 7x1."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7, row, column = self.channels_7x7, dict(padding=(0, 3)), dict(padding=(3, 0))
    branch1x1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    branch7x7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = BasicConv2d(c7, (1, 7), **row, name="branch7x7_2")(branch7x7)
    branch7x7 = BasicConv2d(192, (7, 1), **column, name="branch7x7_3")(branch7x7)
    branch7x7dbl = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    branch7x7dbl = BasicConv2d(c7, (7, 1), **column, name="branch7x7dbl_2")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (1, 7), **row, name="branch7x7dbl_3")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(c7, (7, 1), **column, name="branch7x7dbl_4")(branch7x7dbl)
    branch7x7dbl = BasicConv2d(192, (1, 7), **row, name="branch7x7dbl_5")(branch7x7dbl)
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (fig. 10): strided 3x3, 1x7-7x1-strided 3x3 and max-pool branches."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """8x8 block (fig. 7): 3x3 convolutions split into parallel 1x3 and 3x1 outputs.

  Attributes:
    max_pool: the pooling branch's 3x3 pool is a max pool (FIDInceptionE_2, Mixed_7c)
      instead of the average pool without padding (FIDInceptionE_1, Mixed_7b).
  """
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    row, column = dict(padding=(0, 1)), dict(padding=(1, 0))
    branch1x1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    branch3x3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = jnp.concatenate(
        [BasicConv2d(384, (1, 3), **row, name="branch3x3_2a")(branch3x3),
         BasicConv2d(384, (3, 1), **column, name="branch3x3_2b")(branch3x3)], axis=-1)
    branch3x3dbl = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = jnp.concatenate(
        [BasicConv2d(384, (1, 3), **row, name="branch3x3dbl_3a")(branch3x3dbl),
         BasicConv2d(384, (3, 1), **column, name="branch3x3dbl_3b")(branch3x3dbl)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1)))  # Pads with -inf, as PyTorch.
    else:
      pooled = _avg_pool_3x3(x)
    branch_pool = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


def resize_bilinear(images, size: tuple[int, int] = (SIZE, SIZE)):
  """images [N, H, W, C] resized to [N, *size, C] as PyTorch's interpolate(mode="bilinear",
  align_corners=False, antialias=False) does."""
  return jax.image.resize(images, (images.shape[0], *size, images.shape[3]), "bilinear",
                          antialias=False)


class InceptionV3(nn.Module):
  """x [N, H, W, 3 or 1] in [-1, 1] -> (pool3 features [N, 2048], logits [N, 1008]).

  Attributes:
    resize: resize the images to 299x299 first, as pytorch-fid does (its resize_input=True,
      the setting of every FID it computes); without it H and W must be at least 75.
  """
  resize: bool = True

  @nn.compact
  def __call__(self, x):
    """Args: x [N, H, W, C], C = 3 (RGB) or 1 (grayscale, repeated to RGB), in [-1, 1].

    Returns: pool3 features [N, 2048], logits [N, 1008].
    """
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"InceptionV3 takes images [N, H, W, 3] (RGB) or [N, H, W, 1] "
                       f"(grayscale) in [-1, 1], got shape {x.shape}")
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)  # Grayscale as RGB, as PIL's convert("RGB") reads it.
    if self.resize and x.shape[1:3] != (SIZE, SIZE):
      x = resize_bilinear(x)  # [N, 299, 299, 3]
    elif not self.resize and min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"without resizing InceptionV3 needs H and W >= {MIN_SIZE} (its 8x "
                       f"downsampling and valid convolutions), got shape {x.shape}; use "
                       f"resize=True to resize to {SIZE}x{SIZE} as pytorch-fid does")
    x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # [N, 149, 149, 32]
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [N, 147, 147, 32]
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)  # [N, 147, 147, 64]
    x = _max_pool_3x3_stride_2(x)  # [N, 73, 73, 64]
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)  # [N, 73, 73, 80]
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [N, 71, 71, 192]
    x = _max_pool_3x3_stride_2(x)  # [N, 35, 35, 192]
    x = FIDInceptionA(32, name="Mixed_5b")(x)  # [N, 35, 35, 256]
    x = FIDInceptionA(64, name="Mixed_5c")(x)  # [N, 35, 35, 288]
    x = FIDInceptionA(64, name="Mixed_5d")(x)  # [N, 35, 35, 288]
    x = InceptionB(name="Mixed_6a")(x)  # [N, 17, 17, 768]
    for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                               ("Mixed_6e", 192)):
      x = FIDInceptionC(channels_7x7, name=name)(x)  # [N, 17, 17, 768]
    x = InceptionD(name="Mixed_7a")(x)  # [N, 8, 8, 1280]
    x = FIDInceptionE(name="Mixed_7b")(x)  # [N, 8, 8, 2048]
    x = FIDInceptionE(max_pool=True, name="Mixed_7c")(x)  # [N, 8, 8, 2048]
    pool3 = jnp.mean(x, axis=(1, 2))  # [N, 2048], the adaptive average pool to 1x1.
    return pool3, nn.Dense(NUM_CLASSES, precision=PRECISION, name="fc")(pool3)  # [N, 1008]


# Flax variable (collection, leaf) -> (PyTorch parameter, PyTorch array -> Flax array).
_LEAVES = {
    ("params", "kernel"): ("weight", lambda w: w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T),
    ("params", "scale"): ("weight", None),
    ("params", "bias"): ("bias", None),
    ("batch_stats", "mean"): ("running_mean", None),
    ("batch_stats", "var"): ("running_var", None),
}
# Kept by PyTorch's batch norms for training with momentum=None; unused in evaluation.
_IGNORED_SUFFIX = ".num_batches_tracked"


@functools.cache
def torch_layout() -> dict:
  """{PyTorch key: (Flax collection, module path, leaf, PyTorch shape)} of InceptionV3: the
  parameters, then the batch-norm statistics."""
  shapes = jax.eval_shape(InceptionV3(resize=False).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  shapes = {collection: shapes[collection] for collection in ("params", "batch_stats")}
  layout = {}
  for (collection, *modules, leaf), value in traverse_util.flatten_dict(shapes).items():
    name, _ = _LEAVES[collection, leaf]
    shape = value.shape
    if leaf == "kernel":  # [kh, kw, in, out] -> [out, in, kh, kw], or [in, out] -> [out, in].
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    layout[".".join([*modules, name])] = (collection, tuple(modules), leaf, shape)
  return layout


def load_torch_state_dict(state_dict) -> dict:
  """The variables of `InceptionV3` from pytorch-fid's state dict.

  Args:
    state_dict: name -> array (torch tensors or numpy arrays) of torchvision's Inception3 with
      pytorch-fid's FID blocks (fid_inception_v3().state_dict(), or the release file's
      contents): convolutions [out, in, kh, kw], fc.weight [1008, 2048].

  Returns:
    {"params": ..., "batch_stats": ...}, float32, for InceptionV3().apply.
  """
  layout = torch_layout()
  missing = [key for key in layout if key not in state_dict]
  if missing:
    more = f" and {len(missing) - 1} more of its {len(layout)}" if len(missing) > 1 else ""
    raise ValueError(f"the state dict lacks {missing[0]} (shape {layout[missing[0]][-1]}){more}: "
                     f"it is not pytorch-fid's Inception-v3 ({WEIGHTS_FILE})")
  variables = {}
  for key, (collection, modules, leaf, shape) in layout.items():
    value = np.asarray(state_dict[key], np.float32)
    if value.shape != shape:
      raise ValueError(f"{key} has shape {value.shape}; Inception-v3 needs {shape}")
    convert = _LEAVES[collection, leaf][1]
    variables[(collection, *modules, leaf)] = jnp.asarray(convert(value) if convert else value)
  left = sorted(k for k in state_dict if k not in layout and not k.endswith(_IGNORED_SUFFIX))
  if left:
    raise ValueError(f"{len(left)} tensors of the state dict have no place in Inception-v3 "
                     f"(FID): {left[:8]}")
  return traverse_util.unflatten_dict(variables)


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"reading a PyTorch weights file needs torch ({error}): "
                      f"{INSTALL_HINT}") from error
  return torch


def sha256(path) -> str:
  """The SHA-256 of a file, in hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_torch_weights(path) -> dict:
  """The state dict (name -> numpy array) of a PyTorch weights file, read with torch's
  restricted unpickler after checking the hash its name carries, if any."""
  path = pathlib.Path(path)
  match = HASH_IN_NAME.search(path.name)
  if match:
    digest = sha256(path)
    if not digest.startswith(match.group(1)):
      raise ValueError(f"{path}: its name says its SHA-256 starts with {match.group(1)}, but it "
                       f"is {digest}: a corrupt or different file (pytorch-fid's is "
                       f"{WEIGHTS_FILE}, from {WEIGHTS_URL})")
  torch = _import_torch()
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as error:
    raise ValueError(f"{path} is not a PyTorch weights file that torch.load(weights_only=True) "
                     f"reads ({type(error).__name__}: {str(error)[:300]})") from None
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
  return {k: v.numpy() for k, v in state.items()}


def read_npz_weights(path) -> dict:
  """The state dict (name -> array) of an .npz written by `convert`, read without pickle."""
  try:
    with np.load(path, allow_pickle=False) as stored:
      return dict(stored)
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise ValueError(f"{path} is not an .npz of arrays ({type(error).__name__}: {error}); "
                     "write one with python3 -m jaxdiff.inception convert IN.pth OUT.npz") from None


def load_weights(path) -> dict:
  """The variables of `InceptionV3` from pytorch-fid's weights: the release file
  pt_inception-2015-12-05-6726825d.pth (needs torch) or an .npz written by `convert`."""
  read = read_npz_weights if pathlib.Path(path).suffix == ".npz" else read_torch_weights
  return load_torch_state_dict(read(path))


def convert(torch_path, npz_path) -> int:
  """Writes the state dict of a PyTorch weights file, checked against InceptionV3, to an .npz
  (same names, layouts and dtypes) that `load_weights` reads without torch. Returns the number
  of tensors. The file is written to a temporary name and renamed: it is complete or absent."""
  npz_path = pathlib.Path(npz_path)
  if npz_path.suffix != ".npz":
    raise ValueError(f"the output must be an .npz file (load_weights tells the formats by "
                     f"suffix), got {npz_path}")
  state = read_torch_weights(torch_path)
  load_torch_state_dict(state)  # Refuse to write what will not load.
  workdir.write_atomically(npz_path, lambda f: np.savez(f, **state))
  return len(state)


@functools.cache  # One compilation per setting and batch shape.
def _jitted_apply(resize: bool):
  return jax.jit(InceptionV3(resize=resize).apply, compiler_options=compiler_options())


def features(variables, images, *, batch_size: int = BATCH, resize: bool = True,
             progress: bool = False):
  """Inception-v3's pool3 features and logits of images [N, H, W, 3 or 1] in [-1, 1], in
  batches of batch_size images (the last one padded: one compilation per image shape), with
  a progress bar over the batches if progress.

  Returns:
    pool3 features float32 [N, 2048], logits float32 [N, 1008].
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    raise ValueError(f"images must be floats in [-1, 1] (model space), got uint8 in "
                     f"[{images.min()}, {images.max()}]; map them with x / 127.5 - 1")
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"images must be [N, H, W, C] with N >= 1, got shape {images.shape}")
  if not np.all(np.isfinite(images)):
    raise ValueError(f"images must be finite, got {np.sum(~np.isfinite(images))} NaN or inf "
                     "values")
  if images.min() < -1 or images.max() > 1:
    raise ValueError(f"images must lie in [-1, 1] (model space), got values in "
                     f"[{images.min():.4g}, {images.max():.4g}]: clip samples with "
                     "np.clip(x, -1, 1); 8-bit images map with x / 127.5 - 1")
  apply = _jitted_apply(resize)
  num, outputs = images.shape[0], []
  for i in tqdm(range(0, num, batch_size), desc="Inception features", unit="batch",
                disable=not progress):
    batch = images[i:i + batch_size].astype(np.float32)
    batch = np.pad(batch, ((0, batch_size - len(batch)), (0, 0), (0, 0), (0, 0)))
    outputs.append(apply(variables, batch))
  pool3, logits = (np.concatenate([np.asarray(o[k]) for o in outputs])[:num] for k in (0, 1))
  return pool3, logits


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python3 -m jaxdiff.inception", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  command = commands.add_parser("convert", help="a PyTorch weights file (.pth) -> an .npz that "
                                "load_weights reads without torch")
  command.add_argument("torch_path", help=f"pytorch-fid's {WEIGHTS_FILE}")
  command.add_argument("npz_path", help="the .npz to write")
  args = parser.parse_args(argv)
  try:
    count = convert(args.torch_path, args.npz_path)
  except (ValueError, ImportError, OSError) as error:
    raise SystemExit(f"error: {error}") from None
  print(f"wrote {args.npz_path}: {count} tensors of {args.torch_path} (SHA-256 "
        f"{sha256(args.torch_path)})")


if __name__ == "__main__":
  main()
