"""Data sources and the iterator: determinism, shards, epochs, exact resume, checks."""

import gzip
import importlib.abc
import json
import struct
import sys

from absl import flags
import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from jaxdiff import data


def write_idx(path, array):
  """An IDX file of unsigned bytes (gzipped if the name ends in .gz)."""
  header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def tiny_options(kind, tmp_path):
  """Options for a small instance of each registered source; files written under tmp_path."""
  rng = np.random.default_rng(0)
  if kind == "idx":
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 6, 5)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 40))
    return {"directory": tmp_path}
  if kind == "npz":
    np.savez(tmp_path / "x.npz", images=rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8),
             labels=rng.integers(0, 5, 40))
    return {"path": tmp_path / "x.npz"}
  if kind == "folder":
    for i in range(24):
      write_png(tmp_path / f"class{i % 3}" / f"{i}.png",
                rng.integers(0, 256, (5, 4, 3), dtype=np.uint8))
    return {"path": tmp_path}
  if kind == "latents":  # As encode.py writes them; a variance of exp(-200): z is the mean.
    mean = rng.standard_normal((40, 2, 2, 3)).astype(np.float32)
    np.save(tmp_path / data.LATENTS, np.concatenate([mean, np.full_like(mean, -200)], -1))
    np.save(tmp_path / data.LATENT_LABELS, rng.integers(0, 5, 40).astype(np.int32))
    autoencoder = {"scaling_factor": 1.0, "shift_factor": 0.0}
    (tmp_path / data.LATENTS_RECORD).write_text(json.dumps(
        {"autoencoder": autoencoder, "num": 40, "shape": [2, 2, 3], "num_classes": 5,
         "stored": data.STORED}))
    return {"path": tmp_path}
  if kind == "pairs":  # As reflow.py writes them: here a teacher of 3-D points.
    np.save(tmp_path / data.PAIRS_SAMPLES, rng.standard_normal((40, 3)).astype(np.float32))
    np.save(tmp_path / data.PAIRS_NOISE, rng.standard_normal((40, 3)).astype(np.float32))
    np.save(tmp_path / data.PAIRS_LABELS, rng.integers(0, 5, 40).astype(np.int32))
    (tmp_path / data.PAIRS_RECORD).write_text(json.dumps(
        {"num": 40, "shape": [3], "num_classes": 5, "eight_bit": False, "autoencoder": None,
         "stored": data.PAIRS_STORED}))
    return {"path": tmp_path}
  return {"digits": {"split": "test"}, "tfds": {"name": "mnist", "split": "train"},
          "toy": {"name": "moons", "num_points": 200}, "oracle": {"num_points": 200}}[kind]


@pytest.fixture(params=sorted(data.SOURCES))
def source(request, tmp_path):
  """Every registered source, small; tfds through tfds.testing.mock_data, never a download."""
  with tfds.testing.mock_data(num_examples=40):
    yield data.make_source(request.param, **tiny_options(request.param, tmp_path))


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def model_space(source, index):
  """The record as the iterator yields it, as bytes (latents: at their mean)."""
  image = source[index]["image"]
  if getattr(source, "autoencoder", None) is not None:
    return source.to_model(image[None])[0].tobytes()
  return (image.astype(np.float32) / 127.5 - 1 if source.eight_bit else image).tobytes()


def test_every_source_is_deterministic_sharded_checked_and_resumable(source):
  # Records: the promised shape, dtype and label range.
  record = source[0]
  assert data.model_arrays(source, 1)[0].shape == (1, *source.shape)
  assert record["label"].dtype == np.int32
  assert record["image"].dtype == (np.uint8 if source.eight_bit else np.float32)
  # Same seed, same batches; another seed, others.
  first = take(data.make_iterator(source, batch_size=8, seed=0), 3)
  assert_same_batches(first, take(data.make_iterator(source, batch_size=8, seed=0), 3))
  assert not np.array_equal(first[0]["image"],
                            next(data.make_iterator(source, batch_size=8, seed=1))["image"])
  batch = first[0]
  assert batch["image"].shape == (8, *source.shape) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert np.all(batch["label"] < max(source.num_classes, 1)) and np.all(batch["label"] >= 0)
  if source.eight_bit:
    assert -1 <= batch["image"].min() < batch["image"].max() <= 1
  # Two processes: each reads only records of its own half, in one epoch, none of the other's.
  size = len(source) // 2
  seen = []
  for p in range(2):
    iterator = data.make_iterator(source, batch_size=8, seed=0, process_index=p, process_count=2)
    batches = take(iterator, size // 4)
    assert batches[0]["image"].shape[0] == 4
    seen.append({x.tobytes() for b in batches for x in b["image"]})
    assert seen[p] <= {model_space(source, k) for k in range(p * size, (p + 1) * size)}
  assert not seen[0] & seen[1]
  # Resume from the state after two batches.
  iterator = data.make_iterator(source, batch_size=8, seed=0)
  take(iterator, 2)
  state = iterator.get_state()
  restored = data.make_iterator(source, batch_size=8, seed=0)
  restored.set_state(state)
  assert_same_batches(take(restored, 3), take(iterator, 3))


def test_make_source_refuses_unknown_names_and_options():
  with pytest.raises(ValueError, match=r"unknown data source 'mnist'; valid: \['digits'"):
    data.make_source("mnist")
  with pytest.raises(ValueError, match=r"got unknown options \['splt'\]; its options: "
                                       r"\(split: str = 'train'\)"):
    data.make_source("digits", splt="test")
  with pytest.raises(ValueError, match=r"'npz' got no \['path'\]; its options: \(path\)"):
    data.make_source("npz")


def numbered_source(num_records):
  """Records whose every pixel is the record's number, labels its number mod 7."""
  images = np.broadcast_to(np.arange(num_records, dtype=np.uint8)[:, None, None, None],
                           (num_records, 2, 3, 1))
  return data.ArraySource(images, np.arange(num_records) % 7, 7, eight_bit=True, origin="test")


def numbers(batches):
  return [int(n) for b in batches for n in np.round((b["image"][:, 0, 0, 0] + 1) * 127.5)]


def test_shards_cover_every_epoch_each_reshuffled():
  source = numbered_source(61)  # 3 shards of 20; record 60 is the dropped remainder.
  everything = []
  for p in range(3):
    iterator = data.make_iterator(source, batch_size=15, seed=4, process_index=p, process_count=3)
    epochs = [numbers(take(iterator, 4)) for _ in range(3)]  # 4 batches of 5 = one epoch.
    for epoch in epochs:
      assert sorted(epoch) == list(range(20 * p, 20 * p + 20))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    everything += epochs[0]
  assert sorted(everything) == list(range(60))


def test_last_partial_batch_of_each_epoch_is_dropped():
  iterator = data.make_iterator(numbered_source(20), batch_size=6, seed=0)
  epochs = [numbers(take(iterator, 3)) for _ in range(2)]  # 3 batches of 6: 18 of 20 records.
  for epoch in epochs:
    assert len(set(epoch)) == 18 and set(epoch) <= set(range(20))
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize("steps", [2, 4])  # Mid-epoch; at the end of epoch 0 (4 batches).
def test_resume_is_exact_mid_epoch_and_across_the_epoch_boundary(steps):
  source = numbered_source(20)
  make = lambda: data.make_iterator(source, batch_size=5, seed=9, random_flip=True)
  uninterrupted = take(make(), steps + 6)
  iterator = make()
  take(iterator, steps)
  restored = make()
  restored.set_state(iterator.get_state())
  assert_same_batches(take(restored, 6), uninterrupted[steps:])


def test_resume_through_an_orbax_checkpoint_manager(tmp_path):
  source = data.make_source("digits", split="test")  # 297 records: 9 batches of 32 an epoch.
  make = lambda: data.make_iterator(source, batch_size=32, seed=3, random_flip=True)
  iterator = make()
  take(iterator, 7)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = take(iterator, 5)  # Crosses into the second epoch.
  restored = make()
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.restore(manager.latest_step(),
                    args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert_same_batches(take(restored, 5), expected)


def test_random_flip_mirrors_about_half_and_nothing_else():
  source = data.make_source("digits")
  plain = take(data.make_iterator(source, batch_size=128, seed=2), 4)
  make_flipped = lambda: data.make_iterator(source, batch_size=128, seed=2, random_flip=True)
  flipped = take(make_flipped(), 4)
  assert_same_batches(flipped, take(make_flipped(), 4))
  x = np.concatenate([b["image"] for b in plain])  # [512, 8, 8, 1]
  y = np.concatenate([b["image"] for b in flipped])
  # Each image is either unchanged or its mirror image (so mirroring y[i] again gives x[i]).
  mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3)) & np.any(y != x, axis=(1, 2, 3))
  unchanged = np.all(y == x, axis=(1, 2, 3))
  assert np.all(mirrored | unchanged)
  assert 0.4 < mirrored.mean() < 0.6  # 1/2, to 4.5 standard deviations.
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in flipped]),
                                np.concatenate([b["label"] for b in plain]))
  with pytest.raises(ValueError, match="random_flip mirrors images; this source holds points"):
    data.make_iterator(data.make_source("toy"), batch_size=8, seed=0, random_flip=True)


def test_worker_processes_give_the_same_batches(request):
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; absl.app.run parses them.
    flags.FLAGS.mark_as_parsed()
    request.addfinalizer(flags.FLAGS.unparse_flags)
  source = data.make_source("digits", split="test")
  make = lambda workers: data.make_iterator(source, batch_size=32, seed=1, random_flip=True,
                                            worker_count=workers)
  iterator = make(1)
  try:
    assert_same_batches(take(iterator, 12), take(make(0), 12))  # Across an epoch (9 batches).
  finally:
    iterator.close()


def test_to_uint8_inverts_the_map_to_model_space():
  every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  iterator = data.make_iterator(data.ArraySource(every, np.zeros(1, np.int32), 0, eight_bit=True,
                                                 origin="test"), batch_size=1, seed=0)
  x = next(iterator)["image"]
  assert x.min() == -1 and x.max() == 1
  np.testing.assert_array_equal(data.to_uint8(x), every)
  np.testing.assert_array_equal(data.to_uint8(jnp.array([-1.5, -1.0, 0.0, 1.0, 1.2])),
                                [0, 0, 128, 255, 255])


def test_digits_splits():
  train, test, every = (data.make_source("digits", split=s) for s in ("train", "test", "all"))
  assert (len(train), len(test), len(every)) == (1500, 297, 1797)
  assert train.shape == (8, 8, 1) and train.num_classes == 10 and train.images.max() == 255
  rows = lambda s: {x.tobytes() for x in s.images}
  assert rows(train) | rows(test) == rows(every) and not rows(train) & rows(test)
  with pytest.raises(ValueError, match=r"digits split must be one of \('train', 'test', 'all'\)"):
    data.make_source("digits", split="valid")


def test_idx_reads_gzipped_or_plain_files_and_says_how_to_get_missing_ones(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, (6, 3, 2))
  write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(6))
  source = data.make_source("idx", directory=tmp_path, split="test")
  np.testing.assert_array_equal(source.images[..., 0], images)
  np.testing.assert_array_equal(source.labels, np.arange(6))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    data.make_source("idx", directory=tmp_path, split="train")
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
  write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte", np.arange(6))
  with pytest.raises(ValueError, match="not an IDX file of unsigned bytes: its magic number is "
                                       "00000d03"):
    data.make_source("idx", directory=tmp_path / "bad")


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 8, 8, 3), np.float32), None, r"images must be uint8 0..255, got float32"),
    (np.full((4, 3, 8, 8), 9, np.uint8), None, r"channels last, got shape \(4, 3, 8, 8\)"),
    (np.ones((4, 8, 8, 1), np.uint8), None, r"hold only 0 and 1 \(max 1\)"),
    (np.full((4, 8, 8, 1), 9, np.uint8), np.array([0, 1, 2, -1]), r"in \[0, 3\), got \[-1, 2\]"),
    (np.full((4, 8, 8, 1), 9, np.uint8), np.zeros(4), r"labels must be integers \[N\] = \[4\]"),
])
def test_npz_refuses_wrong_images_and_labels(tmp_path, images, labels, message):
  arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
  np.savez(tmp_path / "x.npz", **arrays)
  with pytest.raises(ValueError, match=message):
    data.make_source("npz", path=tmp_path / "x.npz")


def test_npz_without_labels_and_a_missing_file(tmp_path):
  np.savez(tmp_path / "x.npz", images=np.full((3, 2, 2, 1), 200, np.uint8))
  source = data.make_source("npz", path=tmp_path / "x.npz")
  assert source.num_classes == 0 and source[2]["label"] == 0
  with pytest.raises(FileNotFoundError, match=r"no file .*y.npz; write one with np.savez"):
    data.make_source("npz", path=tmp_path / "y.npz")


def test_folder_classes_sizes_and_crop(tmp_path):
  write_png(tmp_path / "b" / "0.png", np.full((12, 20, 3), 200, np.uint8))
  write_png(tmp_path / "a" / "0.png", np.full((8, 8, 3), 100, np.uint8))
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=r"images differ in shape .*pass image_size=S"):
    data.make_source("folder", path=tmp_path)
  source = data.make_source("folder", path=tmp_path, grayscale=True, image_size=4)
  assert len(source) == 2 and source.num_classes == 2 and source.shape == (4, 4, 1)
  assert source[0]["label"] == 0 and source[1]["label"] == 1  # Subfolders a, b in sorted order.
  np.testing.assert_array_equal(source[1]["image"], np.full((4, 4, 1), 200))  # Flat stays flat.
  with pytest.raises(FileNotFoundError, match=r"expected one subfolder per class"):
    data.make_source("folder", path=tmp_path / "a")


def test_folder_ignores_what_is_no_class_and_names_every_bad_file(tmp_path):
  """Every file is checked when the source is built; what cannot be read is named by path."""
  for name in ("a/0.png", "a/1.png", "b/0.png", "top.png", ".cache/0.png"):
    write_png(tmp_path / name, np.full((6, 5, 3), 90, np.uint8))
  (tmp_path / "notes.txt").write_text("not a class")
  (tmp_path / "a" / "._0.png").write_bytes(b"macOS metadata, not a PNG")
  source = data.make_source("folder", path=tmp_path)
  assert len(source) == 3 and source.num_classes == 2 and source.shape == (6, 5, 3)

  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "notes.txt").write_text("")
  with pytest.raises(ValueError, match=r"the class folders \['c'\] hold no image files"):
    data.make_source("folder", path=tmp_path)
  (tmp_path / "c" / "notes.txt").unlink()
  (tmp_path / "c").rmdir()

  bad = tmp_path / "b" / "9.png"
  bad.write_bytes(b"not a PNG")
  with pytest.raises(ValueError, match=f"^{bad} is not an image PIL can read"):
    data.make_source("folder", path=tmp_path)
  PIL.Image.fromarray(np.zeros((6, 5), np.uint16)).save(bad)
  with pytest.raises(ValueError, match=f"^{bad} is a I;16 image, not 8-bit"):
    data.make_source("folder", path=tmp_path)
  write_png(bad, np.zeros((7, 5, 3), np.uint8))
  with pytest.raises(ValueError, match=f"images differ in shape \\(width x height\\): 3 of 4 "
                                       f"are 5x6, but {bad} is 5x7; pass image_size=S"):
    data.make_source("folder", path=tmp_path)

  # A header that reads and data cut off: found when the record is read (here after the
  # records the source decodes when built), named by path.
  for i in range(1, 8):
    write_png(tmp_path / "b" / f"{i}.png", np.full((6, 5, 3), 90, np.uint8))
  write_png(bad, np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
  bad.write_bytes(bad.read_bytes()[:60])
  source = data.make_source("folder", path=tmp_path)
  assert [source[i]["label"] for i in (0, 9)] == [0, 1]
  with pytest.raises(ValueError, match=f"^cannot decode the image {bad} \\(image file is "
                                       "truncated"):
    source[10]


def test_idx_names_a_cut_off_or_wrong_file(tmp_path):
  write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 3, 2)))
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6))
  images = tmp_path / "train-images-idx3-ubyte.gz"
  images.write_bytes(images.read_bytes()[:-12])
  with pytest.raises(ValueError, match=f"^{images} cannot be read as gzip \\(Compressed file "
                                       "ended before the end-of-stream marker was reached\\)"):
    data.make_source("idx", directory=tmp_path)
  images.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 6]))  # Not gzipped, and cut off.
  with pytest.raises(ValueError, match=f"^{images} cannot be read as gzip \\(Not a gzipped"):
    data.make_source("idx", directory=tmp_path)
  images.rename(tmp_path / "train-images-idx3-ubyte")
  with pytest.raises(ValueError, match="the IDX header of 3 dimensions is cut off after 8 bytes"):
    data.make_source("idx", directory=tmp_path)


class NoTensorFlow(importlib.abc.MetaPathFinder):
  """Makes any import of TensorFlow fail, as if it were not installed."""

  def find_spec(self, name, path, target=None):
    if name.split(".")[0] == "tensorflow":
      raise ImportError(f"{name} is blocked by the test")


def test_tfds_reads_without_tensorflow_and_says_how_to_prepare(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "meta_path", [NoTensorFlow(), *sys.meta_path])
  with tfds.testing.mock_data(num_examples=16):
    mnist = data.make_source("tfds", name="mnist", split="test", data_dir=tmp_path)
    celeb_a = data.make_source("tfds", name="celeb_a", split="train", data_dir=tmp_path,
                               image_size=16)
    batch = next(data.make_iterator(celeb_a, batch_size=4, seed=0, random_flip=True))
  assert (mnist.shape, mnist.num_classes, len(mnist)) == ((28, 28, 1), 10, 16)
  assert celeb_a.num_classes == 0 and batch["image"].shape == (4, 16, 16, 3)
  with pytest.raises(FileNotFoundError, match=r"tfds mnist train is not prepared as "
                                              r"array_record.*`tfds build mnist"):
    data.make_source("tfds", name="mnist", data_dir=tmp_path)


def test_toy_sets_and_oracle_points():
  for name, num_classes in [("moons", 2), ("swissroll", 0), ("checkerboard", 0),
                            ("8gaussians", 8)]:
    source = data.make_source("toy", name=name, num_points=500, seed=1)
    assert source.shape == (2,) and source.num_classes == num_classes and not source.eight_bit
    np.testing.assert_array_equal(source.images,
                                  data.make_source("toy", name=name, num_points=500, seed=1).images)
    assert 0.5 < np.abs(source.images).max() < 6  # FFJORD's scale.
  with pytest.raises(ValueError, match=r"toy set must be one of \('moons', 'swissroll'"):
    data.make_source("toy", name="spirals")
  points = data.make_source("oracle", num_points=200, radius=2.0, std=0.1, seed=1)
  assert points.num_classes == 8 and np.bincount(points.labels, minlength=8).min() > 10
  np.testing.assert_allclose(np.linalg.norm(points.images, axis=1), 2.0, atol=0.5)


def test_iterator_refuses_bad_batches():
  source = numbered_source(20)
  with pytest.raises(ValueError, match=r"positive multiple of process_count = 3, got 8"):
    data.make_iterator(source, batch_size=8, seed=0, process_count=3)
  with pytest.raises(ValueError, match=r"shard holds 10 of the 20 records, fewer than its batch "
                                       r"of 16"):
    data.make_iterator(source, batch_size=32, seed=0, process_index=1, process_count=2)
  with pytest.raises(ValueError, match=r"process_index must lie in \[0, process_count = 2\)"):
    data.make_iterator(source, batch_size=8, seed=0, process_index=2, process_count=2)
