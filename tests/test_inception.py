"""Tests for the FID Inception-v3: the Flax network with pytorch-fid's state dict gives
pytorch-fid's pool3 features and logits (random weights, its own pipeline: [0, 1] images
resized to 299x299; in float64 to 5e-14 of the largest value), the resize matches PyTorch's
bilinear interpolation, and weight files are read without pickle, checked and refused by
name."""

import jax
import numpy as np
import pytest

from jaxdiff import inception


def import_pytorch_fid():
  """pytorch_fid.inception (the peers extra; see conftest.py for torchvision on CPU torch)."""
  pytest.importorskip("torch")
  return pytest.importorskip("pytorch_fid.inception")


def random_state_dict(seed=0):
  """Random numpy arrays of every name and shape of pytorch-fid's state dict."""
  rng = np.random.default_rng(seed)
  return {key: rng.standard_normal(shape).astype(np.float32)
          for key, (*_, shape) in inception.torch_layout().items()}


@pytest.fixture(scope="module")
def torch_reference():
  """(pytorch-fid's InceptionV3 resizing to 299x299, the same without resizing, their state
  dict): torchvision's Inception3 with random weights, batch-norm scales and shifts drawn at
  random and running statistics measured on a batch of images like the test's (32x32 noise
  resized to 299x299), loaded by fid_inception_v3 in place of the download."""
  pfi = import_pytorch_fid()
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  # OpenMP threads spin when the CPU is shared (pytest workers, XLA): one is ~7x faster here.
  torch.set_num_threads(1)
  torch.manual_seed(0)
  net = torchvision.models.inception.Inception3(num_classes=1008, aux_logits=False,
                                                init_weights=True)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
        module.momentum = None  # The running statistics become those of the one batch below.
    images = 2 * torch.rand(4, 3, 32, 32) - 1
    net.train()(torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear"))
  state = net.state_dict()
  load = pfi.load_state_dict_from_url
  pfi.load_state_dict_from_url = lambda *args, **kwargs: state
  try:
    models = [pfi.InceptionV3([3], resize_input=resize).eval() for resize in (True, False)]
  finally:
    pfi.load_state_dict_from_url = load
  return (*models, state)


def torch_outputs(model, state, images_01):
  """pytorch-fid's pool3 features [N, 2048] and the logits of its fc [N, 1008] of images
  [N, H, W, 3] in [0, 1], in float64."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    pool3 = model.double()(torch.from_numpy(images_01.transpose(0, 3, 1, 2)))[0][:, :, 0, 0]
    logits = torch.nn.functional.linear(pool3, state["fc.weight"].double(),
                                        state["fc.bias"].double())
  return pool3.numpy(), logits.numpy()


def relative_errors(outputs, expected):
  """max |got - want| / max |want| of pool3 and logits (printed), checking shapes and scale."""
  errors = []
  for name, got, want in zip(("pool3", "logits"), outputs, expected):
    got, scale = np.asarray(got), np.abs(want).max()
    assert got.shape == want.shape and scale > 0.1, (name, got.shape, want.shape, scale)
    errors.append(np.abs(got - want).max() / scale)
    print(f"{name} ({got.dtype}): max abs difference {errors[-1]:.2g} of the largest value "
          f"{scale:.3g}")
  return errors


def test_matches_pytorch_fid_in_float64(torch_reference):
  # pytorch-fid's pipeline: 32x32 images in [0, 1] resized to 299x299, mapped to [-1, 1].
  # In float64 both compute the same function, to rounding (measured: 5e-14).
  resized_model, _, state = torch_reference
  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3))  # float64
  expected = torch_outputs(resized_model, state, (images + 1) / 2)
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                       inception.load_torch_state_dict(state))
    outputs = jax.jit(inception.InceptionV3().apply)(variables, images)
    assert max(relative_errors(outputs, expected)) <= 1e-10


def test_features_match_pytorch_fid_in_float32(torch_reference):
  # `features` in float32, in batches of 2 (the second padded), on 75x75 grayscale unresized
  # (the smallest input: Mixed_7c 1x1), given to torch as RGB; the resize to 299x299 is the
  # float64 test's. This random network amplifies float32 rounding: measured 1.4e-6 of the
  # largest value here, 6e-5 at 299x299 (PyTorch's own float32 forward is 8e-5 from its
  # float64 one there).
  _, model, state = torch_reference
  images = np.random.default_rng(1).uniform(-1, 1, (3, 75, 75, 1))
  expected = torch_outputs(model, state, np.repeat((images + 1) / 2, 3, axis=-1))
  outputs = inception.features(inception.load_torch_state_dict(state),
                               images.astype(np.float32), batch_size=2, resize=False)
  assert max(relative_errors(outputs, expected)) <= 1e-3


@pytest.mark.parametrize("shape, size", [((2, 32, 32, 3), (299, 299)), ((1, 7, 9, 2), (5, 13)),
                                         ((1, 400, 350, 3), (299, 299))])
def test_resize_matches_torch_interpolate(shape, size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(2).uniform(-1, 1, shape).astype(np.float32)
  expected = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size,
                                             mode="bilinear", align_corners=False)
  got = np.asarray(inception.resize_bilinear(x, size))
  np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_images_outside_model_space_are_refused():
  # Refused before the network runs: no weights needed.
  with pytest.raises(ValueError, match=r"uint8 in \[0, 255\]; map them with x / 127.5 - 1"):
    inception.features(None, np.arange(2 * 8 * 8 * 3).reshape(2, 8, 8, 3).astype(np.uint8))
  images = np.linspace(0, 255, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  with pytest.raises(ValueError, match=r"lie in \[-1, 1\] \(model space\), got values in "
                                       r"\[0, 255\]"):
    inception.features(None, images)
  with pytest.raises(ValueError, match="must be finite, got 1 NaN or inf"):
    inception.features(None, np.where(images == 0, np.nan, images))
  with pytest.raises(ValueError, match="needs H and W >= 75 .* use resize=True"):
    jax.eval_shape(inception.InceptionV3(resize=False).init, jax.random.PRNGKey(0),
                   jax.ShapeDtypeStruct((1, 74, 80, 3), np.float32))


def test_state_dict_errors_name_the_key():
  state = random_state_dict()
  key = "Mixed_7c.branch_pool.conv.weight"
  with pytest.raises(ValueError, match=f"lacks {key} \\(shape \\(192, 2048, 1, 1\\)\\): it"):
    inception.load_torch_state_dict({k: v for k, v in state.items() if k != key})
  wrong = dict(state, **{"Mixed_6b.branch7x7_2.conv.weight": np.zeros((128, 128, 7, 1))})
  with pytest.raises(ValueError, match=r"Mixed_6b.branch7x7_2.conv.weight has shape \(128, 128, "
                                       r"7, 1\); Inception-v3 needs \(128, 128, 1, 7\)"):
    inception.load_torch_state_dict(wrong)
  with pytest.raises(ValueError, match="1 tensors .* no place .*AuxLogits.fc.weight"):
    inception.load_torch_state_dict(dict(state, **{"AuxLogits.fc.weight": np.zeros((1008, 768))}))
  variables = inception.load_torch_state_dict(
      dict(state, **{"Mixed_5b.branch1x1.bn.num_batches_tracked": np.array(7)}))
  # OIHW -> HWIO, [out, in] -> [in, out]; batch norm statistics in batch_stats.
  np.testing.assert_array_equal(variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"],
                                state["Conv2d_1a_3x3.bn.running_var"])


def test_weight_files_round_trip_and_refusals(tmp_path):
  torch = pytest.importorskip("torch")
  state = random_state_dict()
  pth = tmp_path / "inception.pth"  # No hash in the name: nothing to check.
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
  npz = tmp_path / "out" / "inception.npz"
  inception.main(["convert", str(pth), str(npz)])
  expected = inception.load_torch_state_dict(state)
  for path in (pth, npz):
    jax.tree_util.tree_map(np.testing.assert_array_equal, inception.load_weights(path), expected)

  # A hash in the name is checked: the file's own SHA-256 prefix passes, another is refused.
  prefix = inception.sha256(pth)[:8]
  named = pth.rename(tmp_path / f"pt_inception-2015-12-05-{prefix}.pth")
  inception.load_weights(named)
  wrong = named.rename(tmp_path / f"pt_inception-2015-12-05-{'0' * 8}.pth")
  with pytest.raises(ValueError, match=f"SHA-256 starts with 00000000, but it is {prefix}"):
    inception.load_weights(wrong)
  with pytest.raises(SystemExit, match="SHA-256 starts with 00000000"):
    inception.main(["convert", str(wrong), str(tmp_path / "refused.npz")])
  assert not (tmp_path / "refused.npz").exists()


class NotWeights:
  """An object that torch.load(weights_only=True) refuses to unpickle."""


def test_not_a_weights_file_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  for name in ("text.pth", "text.npz"):
    (tmp_path / name).write_text("not weights")
    with pytest.raises(ValueError, match=f"{name} is not"):
      inception.load_weights(tmp_path / name)
  torch.save({"fc.weight": NotWeights()}, tmp_path / "object.pth")
  with pytest.raises(ValueError, match="object.pth is not a PyTorch weights file"):
    inception.load_weights(tmp_path / "object.pth")
  torch.save([torch.zeros(3)], tmp_path / "list.pth")
  with pytest.raises(ValueError, match="holds a list, not a state dict"):
    inception.load_weights(tmp_path / "list.pth")
  # Weights files that read, but hold another network: PyTorch's legacy (pre-1.6, not zip)
  # format, as older releases are written, and an .npz.
  torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "legacy.pth",
             _use_new_zipfile_serialization=False)
  np.savez(tmp_path / "small.npz", **{"fc.weight": np.zeros((10, 2048))})
  for name in ("legacy.pth", "small.npz"):
    with pytest.raises(ValueError, match=r"lacks Conv2d_1a_3x3.bn.bias \(shape \(32,\)\) and 470 "
                                         r"more of its 472"):
      inception.load_weights(tmp_path / name)
