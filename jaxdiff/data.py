"""Training data: random-access sources and one deterministic, checkpointable iterator.

A source is a Grain random-access data source (`len`, `getitem`) whose records
are {"image": uint8 [H, W, C] (8-bit images) or float32 [D] (points already in
model space), "label": int32 (0 when the source has none)}; it exposes `shape`,
`num_classes` (0 if unlabeled) and `eight_bit`, and its arrays are checked once
when it is built. SOURCES is the one registry, `make_source` builds an entry
by name.

`make_iterator` gives each process its own contiguous shard of the records
(split evenly, the remainder dropped), reads the shard in a new permutation
every epoch, drops each epoch's last partial batch, optionally flips images
left-right, and maps 8-bit images to model space x / 127.5 - 1 in [-1, 1]
(`to_uint8` inverts it for PNGs). Every batch is a function of (seed, process,
position) alone, and the position is Grain's iterator state: saved and
restored with the checkpoint through `grain.checkpoint.CheckpointSave` /
`CheckpointRestore` in an Orbax CheckpointManager, it makes a resumed run see
exactly the batches an uninterrupted run would have. Each Grain element is a
whole batch (`ShardBatches`): Grain's per-record shuffle and reads cost about
80 us a record on a 2-core CPU, reading a batch at once about 3 us.

A latents source (`latents_source`, written once by encode.py:
`jaxdiff.train.encode_run`) holds the posterior q(z | x) = N(mean, diag
exp(logvar)) of a KL autoencoder for each image of a dataset (Rombach et al.
2022, sec. 3); its iterator draws a fresh z ~ q(z | x) for every batch, as LDM's
first stage does on the fly, and yields the diffusion model's
x_latent = scaling_factor (z - shift_factor), with eps a function of (seed,
process, position) like every other random choice here.

A pairs source (`pairs_source`, written once by reflow.py:
`jaxdiff.train.reflow_run`) holds a teacher's coupling for rectified flow's
reflow (Liu et al. 2022): noise z and the endpoint x0 of the teacher's
probability-flow ODE from it, already in model space; its batches carry z as
"noise" beside x0 as "image".

The 2-D toy sets are FFJORD's (Grathwohl et al. 2019, `lib/toy_data.py`), at
its scale (coordinates within about +-4); `oracle` draws from the ring mixture
of `jaxdiff.oracle`. `image_size` crops and resizes images as ADM does
(Dhariwal & Nichol 2021, `image_datasets.py` center_crop_arr).
"""

import collections
import dataclasses
import functools
import gzip
import inspect
import json
import pathlib
import struct
import sys
import zlib
from typing import Any, Callable

import grain
import jax
import numpy as np
import PIL.Image

from jaxdiff import oracle

# Where Debian's package dataset-fashion-mnist installs the four gzipped IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Records a lazy source reads and checks when it is built.
NUM_CHECKED = 8
CHANNELS = (1, 3, 4)
TOY_SETS = ("moons", "swissroll", "checkerboard", "8gaussians")
# What encode.py writes into its folder (`latents_source` reads it): the posterior of every
# image, float32 [N, h, w, 2c] (mean and logvar on the channel axis); the labels, int32 [N];
# what they are, as JSON, written last (a folder without it holds no finished latents).
LATENTS = "latents.npy"
LATENT_LABELS = "labels.npy"
LATENTS_RECORD = "latents.json"
STORED = "posterior mean and log-variance"
# What reflow.py writes into its folder (`pairs_source` reads it): the noise z, float32
# [N, ...]; the teacher's ODE endpoint x0 from it, float32 [N, ...] in model space; the labels
# the teacher was conditioned on (0 for an unconditional one), int32 [N]; what they are, as
# JSON, written last.
PAIRS_NOISE = "noise.npy"
PAIRS_SAMPLES = "samples.npy"
PAIRS_LABELS = "labels.npy"
PAIRS_RECORD = "pairs.json"
PAIRS_STORED = "noise z at t = 1 and the teacher's probability-flow ODE endpoint x0"


def check_records(images, labels, num_classes: int, *, eight_bit: bool, origin: str,
                  posterior: bool = False):
  """Raises ValueError unless the records are what a source promises.

  Args:
    images: uint8 [N, H, W, C] with C in (1, 3, 4) and values beyond 0/1 (eight_bit), finite
      float32 [N, h, w, 2c] posteriors (posterior: mean and logvar of latents), or finite
      float32 [N, D] points.
    labels: integers [N] in [0, num_classes); all 0 when num_classes is 0.
    origin: names the data in the error message.
  """
  if images.shape[0] == 0:
    raise ValueError(f"{origin} holds no records")
  if eight_bit:
    if images.dtype != np.uint8:
      raise ValueError(
          f"{origin}: images must be uint8 0..255, got {images.dtype} in "
          f"[{images.min()}, {images.max()}]; convert e.g. [0, 1] floats with "
          "np.round(x * 255).astype(np.uint8)")
    if images.ndim != 4 or images.shape[-1] not in CHANNELS:
      raise ValueError(
          f"{origin}: images must be [N, H, W, C] with C in {CHANNELS} channels last, got shape "
          f"{images.shape}; a channels-first [N, C, H, W] array needs "
          "np.transpose(images, (0, 2, 3, 1))")
    if images.max() <= 1:
      raise ValueError(f"{origin}: uint8 images hold only 0 and 1 (max {images.max()}); 8-bit "
                       "images span 0..255: scale binary or [0, 1] images by 255")
  elif posterior:
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[-1] % 2:
      raise ValueError(f"{origin}: latents must be float32 [N, h, w, 2c] (the posterior's mean "
                       f"and log-variance), got {images.dtype} {images.shape}; write them with "
                       "encode.py")
    if not np.all(np.isfinite(images)):
      raise ValueError(f"{origin}: latents must be finite, got "
                       f"{np.sum(~np.isfinite(images))} non-finite values; encode again")
  else:
    if images.dtype != np.float32 or images.ndim != 2:
      raise ValueError(f"{origin}: points must be float32 [N, D], got {images.dtype} "
                       f"{images.shape}")
    if not np.all(np.isfinite(images)):
      raise ValueError(f"{origin}: points must be finite, got "
                       f"{np.sum(~np.isfinite(images))} non-finite values")
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{origin}: labels must be integers [N] = [{images.shape[0]}], got "
                     f"{labels.dtype} {labels.shape}")
  if num_classes == 0 and np.any(labels != 0):
    raise ValueError(f"{origin}: an unlabeled source has labels 0, got {np.unique(labels)[:10]}")
  if num_classes and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{origin}: labels must lie in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}]")


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """Records held in memory: images uint8 [N, H, W, C] (eight_bit) or points float32 [N, D].

  labels [N] are stored as int32; `origin` names the data in error messages.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  eight_bit: bool
  origin: str

  def __post_init__(self):
    check_records(self.images, self.labels, self.num_classes, eight_bit=self.eight_bit,
                  origin=self.origin)
    object.__setattr__(self, "labels", self.labels.astype(np.int32))

  @property
  def shape(self) -> tuple[int, ...]:
    return self.images.shape[1:]

  def __len__(self) -> int:
    return self.images.shape[0]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}


@dataclasses.dataclass(frozen=True, eq=False)
class LazyImageSource:
  """8-bit images read one record at a time (files, tfds), of one shape checked on every read.

  `read(index) -> (uint8 [H, W, C], label, name of the record)`; `image_size`, if set, crops
  and resizes every image to [image_size, image_size, C] as ADM does.
  """

  read: Callable[[int], tuple[np.ndarray, int, str]]
  length: int
  num_classes: int
  origin: str
  image_size: int | None = None
  shape: tuple[int, ...] = dataclasses.field(init=False)
  eight_bit = True

  def __post_init__(self):
    first = [self._image_label(i) for i in range(min(NUM_CHECKED, self.length))]
    if not first:
      raise ValueError(f"{self.origin} holds no records")
    shapes = {name: image.shape for image, _, name in first}
    if len(set(shapes.values())) > 1:
      raise ValueError(f"{self.origin}: images differ in shape ({shapes}); pass image_size=S to "
                       "crop and resize all to [S, S]")
    check_records(np.stack([image for image, _, _ in first]),
                  np.array([label for _, label, _ in first]), self.num_classes, eight_bit=True,
                  origin=self.origin)
    object.__setattr__(self, "shape", first[0][0].shape)

  def _image_label(self, index):
    image, label, name = self.read(index)
    if self.image_size is not None:
      image = center_crop(image, self.image_size)
    return image, label, name

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    image, label, name = self._image_label(index)
    if image.shape != self.shape:
      raise ValueError(f"{self.origin}: {name} is {image.shape}, unlike the {self.shape} of the "
                       "first records; pass image_size=S to crop and resize all to [S, S]")
    return {"image": image, "label": np.int32(label)}


def center_crop(image, image_size: int):
  """uint8 [H, W, C] -> [image_size, image_size, C], ADM's center_crop_arr.

  Halves with a box filter while the short side is at least 2 * image_size, resizes the short
  side to image_size (bicubic) and crops the center.
  """
  pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  while min(pil.size) >= 2 * image_size:
    pil = pil.resize(tuple(s // 2 for s in pil.size), resample=PIL.Image.Resampling.BOX)
  scale = image_size / min(pil.size)
  pil = pil.resize(tuple(round(s * scale) for s in pil.size),
                   resample=PIL.Image.Resampling.BICUBIC)
  resized = np.asarray(pil).reshape(pil.size[1], pil.size[0], image.shape[-1])
  top, left = (resized.shape[0] - image_size) // 2, (resized.shape[1] - image_size) // 2
  return resized[top:top + image_size, left:left + image_size]


# Sources. Each constructor takes only keyword options and returns a checked source.


def digits_source(split: str = "train"):
  """scikit-learn's bundled 8x8 digits: [8, 8, 1], 10 classes, values round(v * 255 / 16).

  Splits of one permutation fixed by seed 0: "test" its last 297 of 1797, "train" the other
  1500, "all" every digit in the original order.
  """
  splits = ("train", "test", "all")
  if split not in splits:
    raise ValueError(f"digits split must be one of {splits}, got {split!r}")
  import sklearn.datasets  # pylint: disable=import-outside-toplevel  # A second of start-up.

  digits = sklearn.datasets.load_digits()
  images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  order = np.random.default_rng(0).permutation(len(images))
  index = {"train": order[:-297], "test": order[-297:], "all": np.arange(len(images))}[split]
  return ArraySource(images[index], digits.target[index], 10, eight_bit=True,
                     origin=f"digits {split}")


def read_idx(path) -> np.ndarray:
  """The uint8 array in an IDX file (LeCun's MNIST format), gzipped if its name ends in .gz.

  Raises:
    ValueError naming the file when it is not a whole gzip stream or not an IDX file.
  """
  path = pathlib.Path(path)
  try:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
      data = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as error:
    raise ValueError(f"{path} cannot be read as gzip ({error}); download it again (a file "
                     "that is not gzipped must not end in .gz)") from None
  if len(data) < 4 or data[:3] != b"\0\0\x08":
    raise ValueError(f"{path} is not an IDX file of unsigned bytes: its magic number is "
                     f"{data[:4].hex()}, expected 000008 followed by the number of dimensions")
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise ValueError(f"{path}: the IDX header of {ndim} dimensions is cut off after "
                     f"{len(data)} bytes; download the file again")
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  if len(data) - 4 - 4 * ndim != np.prod(shape):
    raise ValueError(f"{path}: header says {shape} = {np.prod(shape)} bytes, the file holds "
                     f"{len(data) - 4 - 4 * ndim}")
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def idx_source(directory=FASHION_MNIST_DIR, split: str = "train"):
  """MNIST or Fashion-MNIST from IDX files in `directory`: [28, 28, 1], 10 classes.

  Split "train" reads train-{images-idx3,labels-idx1}-ubyte, "test" t10k-..., each gzipped
  (.gz) or not.
  """
  if split not in ("train", "test"):
    raise ValueError(f"idx split must be 'train' or 'test', got {split!r}")
  directory = pathlib.Path(directory)
  prefix = {"train": "train", "test": "t10k"}[split]
  arrays = []
  for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
    found = [directory / name for name in (stem, stem + ".gz") if (directory / name).is_file()]
    if not found:
      raise FileNotFoundError(
          f"no {stem} or {stem}.gz in {directory}. Fashion-MNIST: `apt-get install "
          f"dataset-fashion-mnist` (Debian/Ubuntu; installs {FASHION_MNIST_DIR}) or the files from "
          "https://github.com/zalandoresearch/fashion-mnist; MNIST: the four files from "
          "https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision's mirror); then pass "
          "directory=")
    arrays.append(read_idx(found[0]))
  images, labels = arrays
  if images.ndim != 3:
    raise ValueError(f"{directory}/{prefix}-images-idx3-ubyte must hold [N, H, W] images, got "
                     f"{images.shape}")
  return ArraySource(images[..., None], labels, 10, eight_bit=True,
                     origin=f"IDX files {directory} ({split})")


def npz_source(path):
  """An .npz with "images" uint8 [N, H, W, C] and optional "labels" [N] (classes 0..max)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no file {path}; write one with np.savez(path, images=uint8 "
                            "[N, H, W, C], labels=int [N]) (labels optional)")
  with np.load(path) as arrays:
    if "images" not in arrays:
      raise ValueError(f"{path} must hold an array 'images' [N, H, W, C], it holds "
                       f"{sorted(arrays.keys())}")
    images = arrays["images"]
    labeled = "labels" in arrays
    labels = arrays["labels"] if labeled else np.zeros(len(images), np.int32)
  num_classes = int(labels.max()) + 1 if labeled and labels.size else 0
  return ArraySource(images, labels, num_classes, eight_bit=True, origin=f"npz {path}")


# PIL modes of 8-bit images: each converts to RGB or L keeping its range.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")


def _image_header(path) -> tuple[tuple[int, int], str]:
  """(width, height) and PIL mode of an image file, from its header alone."""
  try:
    with PIL.Image.open(path) as pil:
      return pil.size, pil.mode
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
    raise ValueError(f"{path} is not an image PIL can read ({error}); replace or remove "
                     "it") from None


def _read_image_file(paths, labels, mode, index):
  try:
    with PIL.Image.open(paths[index]) as pil:
      image = np.asarray(pil.convert(mode))
  except (OSError, SyntaxError, ValueError) as error:  # A header that reads, data that does not.
    raise ValueError(f"cannot decode the image {paths[index]} ({error}); replace or remove "
                     "it") from None
  return image.reshape(*image.shape[:2], -1), labels[index], str(paths[index])


def _check_headers(path, headers: dict, same_size: bool):
  """Raises ValueError naming a file that is not an 8-bit image or, with same_size, whose
  size differs from most others'."""
  for file, (_, mode) in headers.items():
    if mode not in EIGHT_BIT_MODES:
      raise ValueError(f"{file} is a {mode} image, not 8-bit ({EIGHT_BIT_MODES}); convert it, "
                       "e.g. to 8-bit RGB or grayscale")
  sizes = collections.Counter(size for size, _ in headers.values())
  if same_size and len(sizes) > 1:
    (width, height), count = sizes.most_common(1)[0]
    odd = [f"{file} is {w}x{h}" for file, ((w, h), _) in headers.items()
           if (w, h) != (width, height)]
    raise ValueError(f"folder {path}: images differ in shape (width x height): {count} of "
                     f"{len(headers)} are {width}x{height}, but {', '.join(odd[:3])}"
                     f"{f' and {len(odd) - 3} more' if len(odd) > 3 else ''}; pass "
                     "image_size=S to crop and resize all to [S, S]")


def folder_source(path, grayscale: bool = False, image_size: int | None = None):
  """Images in `path`/<class>/<file>, one subfolder per class in sorted order, read with PIL.

  Files at the top level, hidden files and folders (".name") and files of no image type are
  not records. Every file's header (PIL reads no pixels) is checked once when the source is
  built, so that a file PIL cannot identify, an image that is not 8-bit or (without
  image_size) one of another size is named before training starts, not midway; pixels that
  fail to decode later are named by path too.
  Images are RGB ([H, W, 3]) or, with grayscale, L ([H, W, 1]); all the same size unless
  image_size crops and resizes them.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"no folder {path}; expected {path}/<class>/<image file>")
  extensions = PIL.Image.registered_extensions()
  classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
  images = {d: [f for f in sorted(d.iterdir()) if f.suffix.lower() in extensions
                and not f.name.startswith(".") and f.is_file()] for d in classes}
  if not any(images.values()):
    raise FileNotFoundError(f"no image files in subfolders of {path}; expected one subfolder per "
                            f"class: {path}/<class>/<image file>")
  empty = [d.name for d in classes if not images[d]]
  if empty:
    raise ValueError(f"folder {path}: the class folders {empty} hold no image files; each "
                     "subfolder is a class: add its images, or move the folder out of "
                     f"{path}")
  files = [(f, label) for label, d in enumerate(classes) for f in images[d]]
  paths, labels = zip(*files)
  _check_headers(path, {f: _image_header(f) for f in paths}, same_size=image_size is None)
  read = functools.partial(_read_image_file, paths, labels, "L" if grayscale else "RGB")
  return LazyImageSource(read, len(paths), len(classes), f"folder {path}", image_size)


def _read_tfds_record(data, labeled, index):
  record = data[index]
  image = record["image"]
  return (image.reshape(*image.shape[:2], -1), int(record["label"]) if labeled else 0,
          f"record {index}")


def tfds_source(name: str, split: str = "train", data_dir=None, image_size: int | None = None):
  """A tensorflow-datasets dataset read with `tfds.data_source`, without TensorFlow.

  The dataset must be prepared in the array_record format; its "image" feature is the image
  and a ClassLabel "label", if there is one, the label.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  origin = f"tfds {name} {split}"
  try:
    data = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (NotImplementedError, KeyError, FileNotFoundError) as e:
    raise FileNotFoundError(
        f"{origin} is not prepared as array_record in data_dir "
        f"{data_dir or tfds.core.constants.DATA_DIR}: prepare it once, on any machine with "
        f"TensorFlow, with `tfds build {name} --file_format=array_record --data_dir=DIR` "
        "(manual downloads such as imagenet2012's go to DIR/downloads/manual first) and pass "
        "data_dir=DIR") from e
  features = data.dataset_info.features
  if "image" not in features:
    raise ValueError(f"{origin} has no feature 'image'; its features are {sorted(features)}")
  labeled = "label" in features and isinstance(features["label"], tfds.features.ClassLabel)
  read = functools.partial(_read_tfds_record, data, labeled)
  return LazyImageSource(read, len(data), features["label"].num_classes if labeled else 0,
                         origin, image_size)


def toy_source(name: str = "moons", num_points: int = 10000, seed: int = 0):
  """num_points [N, 2] of an FFJORD toy set, drawn from the seed.

  "moons" (labels: which moon) and "8gaussians" (labels: which Gaussian) are labeled,
  "swissroll" and "checkerboard" are not.
  """
  if name not in TOY_SETS:
    raise ValueError(f"toy set must be one of {TOY_SETS}, got {name!r}")
  import sklearn.datasets  # pylint: disable=import-outside-toplevel  # A second of start-up.

  rng = np.random.default_rng(seed)
  labels = np.zeros(num_points, np.int32)
  if name == "moons":
    x, labels = sklearn.datasets.make_moons(num_points, noise=0.1, random_state=seed)
    x = x * 2 + np.array([-1, -0.2])
  elif name == "swissroll":
    x = sklearn.datasets.make_swiss_roll(num_points, noise=1.0, random_state=seed)[0][:, [0, 2]] / 5
  elif name == "checkerboard":
    x1 = rng.uniform(size=num_points) * 4 - 2
    x2 = rng.uniform(size=num_points) - rng.integers(0, 2, num_points) * 2 + np.floor(x1) % 2
    x = np.stack([x1, x2], axis=1) * 2
  else:  # 8gaussians
    labels = rng.integers(0, 8, num_points)
    angles = 2 * np.pi * labels / 8
    x = (4 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
         + 0.5 * rng.standard_normal((num_points, 2))) / 1.414
  num_classes = {"moons": 2, "8gaussians": 8}.get(name, 0)
  return ArraySource(x.astype(np.float32), labels, num_classes, eight_bit=False,
                     origin=f"toy {name}")


def oracle_source(num_points: int = 10000, seed: int = 0, num_modes: int = 8,
                  radius: float = 0.7, std: float = 0.08, dim: int = 2):
  """num_points [N, dim] from `oracle.ring(num_modes, radius, std, dim)`, drawn from the seed.

  Labels: each point's most likely mode (`GaussianMixture.assign`).
  """
  mixture = oracle.ring(num_modes, radius, std, dim)

  @jax.jit  # One compilation rather than one per operation.
  def draw(key):
    x = mixture.sample(key, num_points)  # [N, dim]
    return x, mixture.assign(x)

  x, labels = draw(jax.random.PRNGKey(seed))
  return ArraySource(np.asarray(x, np.float32), np.asarray(labels), num_modes, eight_bit=False,
                     origin=f"oracle ring ({num_modes} modes)")


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSource:
  """An autoencoder's posteriors of a dataset, written by encode.py, read from a memmap.

  Records are {"image": float32 [h, w, 2c], the mean and logvar of q(z | x) concatenated on the
  channel axis, "label": int32}; `shape` is the latents' (h, w, c), what the diffusion model
  sees after `to_model`. `autoencoder` is the `jaxdiff.train.latent.record` of the autoencoder
  (with the scaling and shift the latents are used with), `num_classes` that of the images'
  data.
  """

  posterior: np.ndarray  # [N, h, w, 2c], a read-only memmap.
  labels: np.ndarray  # [N]
  num_classes: int
  autoencoder: dict
  origin: str
  eight_bit = False

  def __post_init__(self):
    check_records(np.asarray(self.posterior[:NUM_CHECKED]), self.labels[:NUM_CHECKED],
                  self.num_classes, eight_bit=False, origin=self.origin, posterior=True)
    check_records(np.zeros((len(self.labels), 1), np.float32), self.labels, self.num_classes,
                  eight_bit=False, origin=self.origin)  # All the labels.
    if len(self.labels) != len(self.posterior):
      raise ValueError(f"{self.origin}: {len(self.posterior)} latents but {len(self.labels)} "
                       "labels; encode again")

  @property
  def shape(self) -> tuple[int, ...]:
    h, w, channels = self.posterior.shape[1:]
    return (h, w, channels // 2)

  def __len__(self) -> int:
    return self.posterior.shape[0]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": np.asarray(self.posterior[index]), "label": self.labels[index]}

  def read_batch(self, index) -> dict[str, np.ndarray]:
    """The records at index [B] at once: one read of the memmap, not B."""
    return {"image": self.posterior[index], "label": self.labels[index]}  # [B, h, w, 2c], [B]

  def to_model(self, posterior, eps=None):
    """Posteriors [B, h, w, 2c] -> the model's x_latent = scaling (z - shift) [B, h, w, c] of
    z = mean + exp(logvar / 2) eps (eps None: z = mean)."""
    mean, logvar = np.split(np.asarray(posterior, np.float32), 2, axis=-1)
    z = mean if eps is None else mean + np.exp(0.5 * logvar) * eps
    return (self.autoencoder["scaling_factor"]
            * (z - self.autoencoder["shift_factor"])).astype(np.float32)

  def draw(self, batch, rng):
    """A batch of posteriors -> x_latent of z ~ q(z | x), eps ~ N(0, I) from rng."""
    posterior = batch["image"]  # [B, h, w, 2c]
    eps = rng.standard_normal((*posterior.shape[:-1], posterior.shape[-1] // 2),
                              dtype=np.float32)
    return {"image": self.to_model(posterior, eps), "label": batch["label"]}


def _written_record(path: pathlib.Path, record_name: str, array_name: str, stored: str,
                    program: str, program_flags: str) -> dict:
  """The JSON record that `program` (encode.py, reflow.py) wrote last into the folder path,
  checked to describe what this reader expects (stored).

  Raises:
    FileNotFoundError where it is missing, saying whether an unfinished run is there;
    ValueError where it stores something else.
  """
  if not (path / record_name).is_file():
    unfinished = (path / "INCOMPLETE").is_file() and (path / array_name).is_file()
    raise FileNotFoundError(
        f"no {record_name} in {path}: "
        + (f"it holds an unfinished {program} run; run its command again to finish it"
           if unfinished else f"write it first, e.g. python3 {program} {program_flags} "
           f"--out {path}"))
  record = json.loads((path / record_name).read_text())
  if record.get("stored") != stored:
    raise ValueError(f"{path / record_name} stores {record.get('stored')!r}, not the "
                     f"{stored!r} this reader expects; write it again with this {program}")
  return record


def latents_source(path):
  """The latents encode.py wrote into the folder `path` (`LATENTS`, `LATENT_LABELS`,
  `LATENTS_RECORD`): an autoencoder's posterior of every image of a dataset, and its labels."""
  path = pathlib.Path(path)
  record = _written_record(path, LATENTS_RECORD, LATENTS, STORED, "encode.py",
                           "--autoencoder AUTOENCODER_WORKDIR")
  posterior = np.load(path / LATENTS, mmap_mode="r")
  if list(posterior.shape) != [record["num"], *record["shape"][:2], 2 * record["shape"][2]]:
    raise ValueError(f"{path / LATENTS} holds {posterior.shape}, but {LATENTS_RECORD} says "
                     f"{record['num']} latents of {record['shape']}; encode again")
  return LatentSource(posterior, np.load(path / LATENT_LABELS), record["num_classes"],
                      record["autoencoder"], f"latents {path}")


@dataclasses.dataclass(frozen=True, eq=False)
class PairsSource:
  """A teacher's (noise, sample) pairs, written by reflow.py, read from memmaps: the coupling
  that rectified flow's reflow trains on (Liu et al. 2022, sec. 2.2).

  Records are {"image": x0 float32 [...], the teacher's ODE endpoint in model space,
  "noise": z float32 [...], the ODE's start at t = 1, "label": int32}. `shape`,
  `num_classes`, `eight_bit` and `autoencoder` are those of the teacher's data, so that a
  model of the pairs is a model of the same data (its samples pictured and judged as the
  teacher's); `record` is pairs.json.
  """

  samples: np.ndarray  # [N, ...], a read-only memmap.
  noise: np.ndarray  # [N, ...], a read-only memmap.
  labels: np.ndarray  # [N]
  record: dict
  origin: str

  def __post_init__(self):
    for name, array in (("samples", self.samples), ("noise", self.noise)):
      check_records(np.asarray(array[:NUM_CHECKED]).reshape(min(NUM_CHECKED, len(array)), -1),
                    self.labels[:NUM_CHECKED], self.num_classes, eight_bit=False,
                    origin=f"{self.origin} ({name})")
    check_records(np.zeros((len(self.labels), 1), np.float32), self.labels, self.num_classes,
                  eight_bit=False, origin=self.origin)  # All the labels.

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.samples.shape[1:])

  @property
  def num_classes(self) -> int:
    return self.record["num_classes"]

  @property
  def eight_bit(self) -> bool:
    return self.record["eight_bit"]

  @property
  def autoencoder(self) -> dict | None:
    return self.record["autoencoder"]

  def __len__(self) -> int:
    return self.samples.shape[0]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": np.asarray(self.samples[index]), "noise": np.asarray(self.noise[index]),
            "label": self.labels[index]}

  def read_batch(self, index) -> dict[str, np.ndarray]:
    """The records at index [B] at once: one read of each memmap, not B."""
    return {"image": self.samples[index], "noise": self.noise[index],  # [B, ...]
            "label": self.labels[index]}  # [B]


def pairs_source(path):
  """The pairs reflow.py wrote into the folder `path` (`PAIRS_NOISE`, `PAIRS_SAMPLES`,
  `PAIRS_LABELS`, `PAIRS_RECORD`): noise z and the teacher's ODE endpoint x0 from it."""
  path = pathlib.Path(path)
  record = _written_record(path, PAIRS_RECORD, PAIRS_SAMPLES, PAIRS_STORED, "reflow.py",
                           "--teacher TEACHER_WORKDIR")
  samples = np.load(path / PAIRS_SAMPLES, mmap_mode="r")
  noise = np.load(path / PAIRS_NOISE, mmap_mode="r")
  expected = [record["num"], *record["shape"]]
  if list(samples.shape) != expected or list(noise.shape) != expected:
    raise ValueError(f"{path} holds samples {samples.shape} and noise {noise.shape}, but "
                     f"{PAIRS_RECORD} says {record['num']} pairs of {record['shape']}; write "
                     "them again")
  return PairsSource(samples, noise, np.load(path / PAIRS_LABELS), record, f"pairs {path}")


SOURCES = {
    "digits": digits_source,
    "idx": idx_source,
    "npz": npz_source,
    "folder": folder_source,
    "tfds": tfds_source,
    "toy": toy_source,
    "oracle": oracle_source,
    "latents": latents_source,
    "pairs": pairs_source,
}


def make_source(kind: str, /, **options):
  """The source registered as `kind`, built with its keyword options."""
  if kind not in SOURCES:
    raise ValueError(f"unknown data source {kind!r}; valid: {sorted(SOURCES)}")
  signature = inspect.signature(SOURCES[kind])
  unknown = sorted(set(options) - set(signature.parameters))
  missing = [n for n, p in signature.parameters.items()
             if p.default is p.empty and n not in options]
  if unknown or missing:
    problems = ([f"unknown options {unknown}"] if unknown else []) + (
        [f"no {missing}"] if missing else [])
    raise ValueError(f"data source {kind!r} got {' and '.join(problems)}; its options: "
                     f"{signature}")
  return SOURCES[kind](**options)


def held_out_options(kind: str, options: dict) -> tuple[dict, str]:
  """The options of `kind` that give records held out from those of `options`, and a phrase
  saying how: its "test" split where it has splits, else new draws (seed + 1), else (no
  split, no seed) the same records."""
  parameters = inspect.signature(SOURCES[kind]).parameters
  if "split" in parameters:
    return {**options, "split": "test"}, "the test split"
  if "seed" in parameters:
    seed = options.get("seed", parameters["seed"].default)
    return {**options, "seed": seed + 1}, f"new draws (seed {seed + 1})"
  return dict(options), "the training data itself (the source has no split or seed)"


# Batches.


@functools.lru_cache(maxsize=4)  # The epochs being read, computed once each.
def shard_permutation(seed: int, size: int, epoch: int) -> np.ndarray:
  """The order [size] in which a shard is read in `epoch`."""
  return np.random.default_rng([seed, epoch]).permutation(size)


@dataclasses.dataclass(frozen=True, eq=False)
class ShardBatches:
  """Batch number `step` of one process's shard: a pure function of (seed, step).

  Epoch e = step // batches_per_epoch reads its batches from the e-th permutation of the
  shard; the last partial batch of every epoch is dropped.
  """

  source: Any
  start: int  # The shard is records [start, start + size).
  size: int
  batch_size: int
  seed: int

  @property
  def batches_per_epoch(self) -> int:
    return self.size // self.batch_size

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(step, self.batches_per_epoch)
    order = shard_permutation(self.seed, self.size, epoch)  # [size]
    index = order[i * self.batch_size:(i + 1) * self.batch_size]
    if hasattr(self.source, "read_batch"):
      return self.source.read_batch(self.start + index)
    records = [self.source[self.start + int(k)] for k in index]
    return {"image": np.stack([r["image"] for r in records]),  # [B, *shape]
            "label": np.array([r["label"] for r in records], np.int32)}  # [B]


def _flip(batch, rng):
  """Mirrors each image of the batch left-right with probability 1/2."""
  image = batch["image"]  # [B, H, W, C]
  flip = rng.random(image.shape[0]) < 0.5
  return {"image": np.where(flip[:, None, None, None], image[:, :, ::-1], image),
          "label": batch["label"]}


def _to_model_space(batch):
  """A batch's uint8 images in model space, its labels kept."""
  return {"image": to_model_space(batch["image"]), "label": batch["label"]}


def make_iterator(source, *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, random_flip: bool = False, read_threads: int = 0,
                  worker_count: int = 0) -> grain.DatasetIterator:
  """An endless iterator over this process's batches; `get_state` / `set_state` its position.

  Args:
    source: a source of SOURCES (or any with len, getitem, `eight_bit`).
    batch_size: the global batch; each process yields batch_size // process_count.
    seed: fixes the shuffle of every epoch, the flips and the latents' draws.
    process_index, process_count: this process and the number of processes; each reads
      its own contiguous 1 / process_count of the records (the remainder is dropped).
    random_flip: mirror each image left-right with probability 1/2 (8-bit images only).
    read_threads: threads preparing batches (0: in the calling thread, best for data in
      memory; more for files).
    worker_count: worker processes preparing batches (grain's mp_prefetch); 0 for none.
      Workers need absl flags parsed (absl.app.run does it) and a main module that runs
      nothing on import.

  Returns:
    A grain.DatasetIterator of {"image": float32 [B_local, *source.shape] (8-bit images in
    [-1, 1], latents as x_latent of a fresh z ~ q(z | x), points and pairs' x0 as they are),
    "label": int32 [B_local]}, and for pairs "noise": their z, float32 [B_local, ...].
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must lie in [0, process_count = {process_count}), got "
                     f"{process_index}")
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size (the global batch) must be a positive multiple of "
                     f"process_count = {process_count}, got {batch_size}")
  pairs = isinstance(source, PairsSource)  # Model-space records: neither mapped nor drawn.
  latent = not pairs and getattr(source, "autoencoder", None) is not None
  if random_flip and pairs:
    raise ValueError(f"random_flip mirrors images; {source.origin} holds the teacher's ODE "
                     "endpoints x0 of their noise z, and a flipped x0 is not the endpoint of "
                     "its z: set data.random_flip = False")
  if random_flip and latent:
    raise ValueError(f"random_flip mirrors images; {source.origin} holds their latents, and a "
                     "flipped image's latent is not the flipped latent: set "
                     "data.random_flip = False")
  if random_flip and not source.eight_bit:
    raise ValueError(f"random_flip mirrors images; this source holds points {source.shape}")
  local_batch = batch_size // process_count
  size = len(source) // process_count  # Records per process, as grain's even split.
  if size < local_batch:
    raise ValueError(f"each process's shard holds {size} of the {len(source)} records, fewer "
                     f"than its batch of {local_batch}")
  # One seed for the shuffles and one for the flips (or the latents' draws), distinct per
  # process.
  shuffle_seed, noise_seed = (int(s) for s in
                              np.random.SeedSequence([seed, process_index]).generate_state(2))
  batches = grain.MapDataset.range(sys.maxsize).map(
      ShardBatches(source, process_index * size, size, local_batch, shuffle_seed))
  if random_flip:
    batches = batches.random_map(_flip, seed=noise_seed)
  if latent:  # Grain's rng of a random_map is a function of (noise_seed, position).
    batches = batches.random_map(source.draw, seed=noise_seed)
  if source.eight_bit and not pairs:
    batches = batches.map(_to_model_space)
  batches = batches.to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
  if worker_count:
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(batches)


def to_model_space(images):
  """uint8 images -> float32 x / 127.5 - 1 in [-1, 1] (the inverse of to_uint8); a jax
  array (also a traced one) stays one, anything else becomes numpy."""
  images = images if isinstance(images, jax.Array) else np.asarray(images)
  return images.astype(np.float32) / 127.5 - 1


def model_arrays(source, num: int | None = None):
  """The first num records (default all) of a source as the model sees them: images mapped
  to [-1, 1] (`to_model_space`), latents as x_latent of their posterior means, points as they
  are, float32 [N, ...]; labels int32 [N]."""
  records = [source[i] for i in range(len(source) if num is None else min(num, len(source)))]
  x = np.stack([r["image"] for r in records])
  if getattr(source, "autoencoder", None) is not None:
    x = source.to_model(x)
  x = to_model_space(x) if source.eight_bit else x.astype(np.float32)
  return x, np.array([r["label"] for r in records], np.int32)


def to_uint8(x) -> np.ndarray:
  """Model-space images in [-1, 1] -> uint8 round((x + 1) * 127.5), clipped to 0..255."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
