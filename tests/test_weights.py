"""Tests for the diffusers weight import: small diffusers models of the same
architecture families, built locally with random weights and saved with
safetensors, give the same outputs in JAX after import (max abs difference
<= 1e-4 in float32, diffusers' integer step n against jaxdiff's t = (n + 1) / T),
and unsupported checkpoints are refused by name."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import weights
from jaxdiff.models import UNet, layers, num_params

T = 1000
STEPS = np.array([0, 17, 500, 999])  # diffusers' integer steps n; jaxdiff's t = (n + 1) / T.
LABELS = np.array([0, 3, 9, 10])  # 10 = the null class of a 10-class model.
# Ho et al.'s conventions (google/ddpm-cifar10-32's sinusoid shift and order, downsampling pad);
# diffusers' defaults (0, True, 1), those of the models its training scripts make, are the others.
HO_ET_AL = dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)
# What the small UNet2DModels below share: RGB, one block per level, 8 groups, GroupNorm epsilon.
SMALL_UNET2D = dict(in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=8,
                    norm_eps=1e-6)


def torch_model(cls, seed, **config):
  """A diffusers model with every parameter (norms included) randomised."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(seed)
  model = cls(**config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def assert_parity(model, tmp_path, x, **kwargs):
  """Saves the diffusers model, imports it, asserts that the max abs difference of the
  outputs is <= 1e-4 on an output of scale > 0.1, and returns the (model, params) imported."""
  torch = pytest.importorskip("torch")
  model.save_pretrained(tmp_path, safe_serialization=True)
  flax_model, params = weights.load_diffusers(tmp_path, num_train_timesteps=T)
  with torch.no_grad():
    expected = model(torch.from_numpy(x), torch.from_numpy(STEPS), **{
        k: torch.from_numpy(v) for k, v in kwargs.items()}).sample.numpy()
  cond = jnp.asarray(kwargs["class_labels"]) if kwargs else None
  apply = jax.jit(lambda params, x, t, cond: flax_model.apply(
      {"params": params}, x, t, cond, deterministic=True))
  out = apply(params, jnp.asarray(x.transpose(0, 2, 3, 1)),
              jnp.asarray((STEPS + 1) / T, jnp.float32), cond)  # [B, H, W, C_out]
  scale = np.abs(expected).max()
  err = float(np.abs(np.asarray(out) - expected.transpose(0, 2, 3, 1)).max())
  print(f"max abs diff {err:.3g} (output scale {scale:.3g})")
  assert scale > 0.1 and err <= 1e-4, (err, scale)
  return flax_model, params


def test_unet2d_default_conventions_import_matches_diffusers(tmp_path):
  diffusers = pytest.importorskip("diffusers")
  # The google/ddpm-cifar10-32 architecture at small width (2 levels, attention at 8x8) in
  # diffusers' default conventions, those of the models its training scripts make: none of
  # freq_shift, flip_sin_to_cos, downsample_padding given. (Ho et al.'s: the next test.)
  model = torch_model(
      diffusers.UNet2DModel, 0, sample_size=16, block_out_channels=(32, 64),
      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None, **SMALL_UNET2D)
  x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
  flax_model, params = assert_parity(model, tmp_path, x)
  assert (flax_model.time_freq_shift, flax_model.time_flip_sin_to_cos,
          flax_model.downsample_padding) == (0.0, True, "symmetric")
  assert num_params(params) == sum(p.numel() for p in model.parameters())


def test_class_conditional_unet2d_import_matches_diffusers(tmp_path):
  diffusers = pytest.importorskip("diffusers")
  # num_class_embeds = 11: ten classes and diffusers' last id, 10, as jaxdiff's null class;
  # Ho et al.'s conventions.
  model = torch_model(
      diffusers.UNet2DModel, 3, sample_size=8, block_out_channels=(16, 32),
      down_block_types=("AttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "AttnUpBlock2D"), attention_head_dim=None,
      num_class_embeds=11, **HO_ET_AL, **SMALL_UNET2D)
  x = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
  assert assert_parity(model, tmp_path, x, class_labels=LABELS)[0].num_classes == 10


def test_adm_style_unet2d_import_matches_diffusers(tmp_path):
  diffusers = pytest.importorskip("diffusers")
  # Dhariwal & Nichol's options: scale-shift norm conditioned on time and class, 8-channel
  # heads (2 at width 16 on 8x8, 4 at width 32 in the middle), residual down/upsampling
  # blocks in both kinds of diffusers levels (Attn*Block2D and Resnet*sampleBlock2D); the
  # sinusoid in diffusers' default conventions (its downsample_padding is unused here).
  model = torch_model(
      diffusers.UNet2DModel, 4, sample_size=8, block_out_channels=(16, 32),
      down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D"),
      up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D"), downsample_type="resnet",
      upsample_type="resnet", resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8,
      attention_head_dim=8, num_class_embeds=11, **SMALL_UNET2D)
  x = np.random.default_rng(4).standard_normal((4, 3, 8, 8)).astype(np.float32)
  flax_model = assert_parity(model, tmp_path, x, class_labels=LABELS)[0]
  assert (flax_model.scale_shift_norm, flax_model.resblock_updown, flax_model.num_head_channels,
          flax_model.attn_resolutions, flax_model.time_freq_shift,
          flax_model.time_flip_sin_to_cos) == (True, True, 8, (8,), 0.0, True)


def test_fourier_time_embedding_matches_diffusers():
  # UNet(time_embedding="fourier")'s embedding against UNet2DModel(time_embedding_type=
  # "fourier")'s (score_sde's GaussianFourierProjection, scale 16, of log sigma, then the
  # MLP), same weights: jaxdiff's s = time_scale t + time_shift is diffusers' log sigma.
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  from diffusers.models.embeddings import GaussianFourierProjection, TimestepEmbedding
  torch.manual_seed(5)
  proj, mlp = GaussianFourierProjection(16, scale=16), TimestepEmbedding(32, 64)
  sigma = np.array([0.01, 0.3, 2.0, 50.0], np.float32)
  with torch.no_grad():
    expected = mlp(proj(torch.from_numpy(sigma))).numpy()
  linear = lambda m: {"kernel": jnp.asarray(m.weight.detach().numpy().T),
                      "bias": jnp.asarray(m.bias.detach().numpy())}
  params = {"W": jnp.asarray(proj.weight.detach().numpy()), "dense0": linear(mlp.linear_1),
            "dense1": linear(mlp.linear_2)}
  out = layers.TimeEmbedding(64, 32, 1.0, 0.0, freq_shift=1.0, flip_sin_to_cos=False,
                             fourier_scale=16.0).apply({"params": params}, np.log(sigma))
  assert np.abs(np.asarray(out) - expected).max() <= 1e-4 * np.abs(expected).max()
  # The U-Net of base width 16 builds this embedding: 2 x 16 features, MLP to 4 x 16.
  unet = UNet(ch=16, ch_mult=(1,), attn_resolutions=(), num_groups=8, time_embedding="fourier")
  shapes = jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                            jnp.zeros(1), deterministic=True))["params"]
  assert jax.tree.map(jnp.shape, shapes["time_embed"]) == jax.tree.map(jnp.shape, params)


def test_ddpm_cifar10_configuration_imports_as_ho_et_al_unet():
  diffusers = pytest.importorskip("diffusers")
  # google/ddpm-cifar10-32's config.json (its weights are not downloaded: random here).
  model = diffusers.UNet2DModel(
      sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      layers_per_block=2, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
      norm_eps=1e-6, norm_num_groups=32, attention_head_dim=None, act_fn="silu")
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  flax_model, params = weights.unet_from_diffusers(dict(model.config), state)
  reference = UNet(dropout=0.0, time_shift=-1.0)  # Ho et al.'s CIFAR-10 U-Net, diffusers' steps.
  assert flax_model.clone(parent=None) == reference.clone(parent=None)
  assert num_params(params) == 35_746_307


def test_dit_import_matches_diffusers(tmp_path):
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  model = torch_model(diffusers.DiTTransformer2DModel, 1, num_attention_heads=2,
                      attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                      sample_size=8, patch_size=2, num_embeds_ada_norm=10)
  blocks = model.transformer_blocks
  with torch.no_grad():  # Converted DiT checkpoints share one (t, y) embedder across blocks.
    for block in blocks[1:]:
      block.norm1.emb.load_state_dict(blocks[0].norm1.emb.state_dict())
  x = np.random.default_rng(1).standard_normal((4, 4, 8, 8)).astype(np.float32)
  assert_parity(model, tmp_path, x, class_labels=LABELS)


def test_dit_with_per_block_embedders_is_refused(tmp_path):
  diffusers = pytest.importorskip("diffusers")
  model = torch_model(diffusers.DiTTransformer2DModel, 2, num_attention_heads=2,
                      attention_head_dim=8, in_channels=4, num_layers=2, sample_size=4,
                      patch_size=2, num_embeds_ada_norm=10)
  model.save_pretrained(tmp_path, safe_serialization=True)
  with pytest.raises(ValueError, match="one time and class embedder shared"):
    weights.load_diffusers(tmp_path)


def test_unsupported_configurations_and_files_are_refused(tmp_path):
  config = dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), sample_size=16,
                attention_head_dim=None, **HO_ET_AL)
  with pytest.raises(ValueError, match="downsample_padding 2; jaxdiff imports \\[0, 1\\]"):
    weights.unet_from_diffusers({**config, "downsample_padding": 2}, {})
  with pytest.raises(ValueError, match=r"\{'class_embed_type': 'timestep'\}"):
    weights.unet_from_diffusers({**config, "class_embed_type": "timestep"}, {})
  with pytest.raises(ValueError, match="num_class_embeds 1"):
    weights.unet_from_diffusers({**config, "num_class_embeds": 1}, {})
  with pytest.raises(ValueError, match="num_head_channels=24 cannot split its attention width"):
    weights.unet_from_diffusers({**config, "attention_head_dim": 24}, {})
  with pytest.raises(ValueError, match="mid-block attention has a GroupNorm"):
    weights.unet_from_diffusers({**config, "resnet_time_scale_shift": "scale_shift"}, {})
  with pytest.raises(ValueError, match=r"\{'upsample_type': 'conv'\}"):
    weights.unet_from_diffusers({**config, "downsample_type": "resnet"}, {})
  with pytest.raises(ValueError, match="the checkpoint lacks conv_in"):
    weights.unet_from_diffusers(config, {})
  (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
  (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(ValueError, match="no .safetensors file"):
    weights.load_diffusers(tmp_path)
  (tmp_path / "config.json").write_text('{"_class_name": "VQModel"}')
  with pytest.raises(ValueError, match="cannot import diffusers class 'VQModel'"):
    weights.load_diffusers(tmp_path)


# A two-level KL autoencoder (f = 2) of diffusers' block types, on 16x16 RGB images.
SMALL_AUTOENCODER = dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
                         latent_channels=4, sample_size=16,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def small_vae(tmp_path_factory):
  """(diffusers AutoencoderKL with random weights, its save_pretrained folder, the imported
  AutoencoderKL, its params, jitted encode and decode)."""
  diffusers = pytest.importorskip("diffusers")
  model = torch_model(diffusers.AutoencoderKL, 5, **SMALL_AUTOENCODER)
  directory = tmp_path_factory.mktemp("vae")
  model.save_pretrained(directory, safe_serialization=True)
  flax_model, params = weights.load_diffusers(directory)
  encode = jax.jit(lambda params, x: flax_model.apply({"params": params}, x, method="encode"))
  decode = jax.jit(lambda params, z: flax_model.apply({"params": params}, z, method="decode"))
  return model, directory, flax_model, params, encode, decode


def assert_close(out, expected_nchw):
  """max abs difference <= 1e-4 of the output's max abs (> 0.1), NHWC against NCHW."""
  expected = expected_nchw.numpy().transpose(0, 2, 3, 1)
  scale = np.abs(expected).max()
  err = float(np.abs(np.asarray(out) - expected).max())
  print(f"max abs diff {err:.3g} (output scale {scale:.3g})")
  assert scale > 0.1 and err <= 1e-4 * scale, (err, scale)


def test_autoencoder_kl_import_matches_diffusers(small_vae):
  torch = pytest.importorskip("torch")
  model, _, flax_model, params, encode, decode = small_vae
  assert (flax_model.block_out_channels, flax_model.layers_per_block,
          flax_model.scaling_factor, flax_model.shift_factor) == ((32, 64), 2, 0.18215, None)
  x = np.random.default_rng(5).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    posterior = model.encode(torch.from_numpy(x)).latent_dist
    decoded = model.decode(posterior.mean).sample
  mean, logvar = encode(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert_close(mean, posterior.mean)
  assert_close(logvar, posterior.logvar)
  assert_close(decode(params, mean), decoded)


def test_autoencoder_kl_of_another_architecture_is_refused(small_vae):
  model, params = small_vae[0], small_vae[3]
  config = dict(model.config)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  # Checkpoints saved before diffusers' Attention class name the mid blocks' attention
  # query, key, value, proj_attn: the same weights.
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  deprecated = {re.sub(r"(attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.",
                       lambda m: f"{m[1]}.{old[m[2]]}.", k): v for k, v in state.items()}
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in deprecated
  jax.tree.map(np.testing.assert_array_equal, params,
               weights.autoencoder_from_diffusers(config, deprecated)[1])
  with pytest.raises(ValueError, match=r"decoder\.up_blocks\.0\.resnets\.2\.conv1\.bias \(64,\)"):
    weights.autoencoder_from_diffusers({**config, "layers_per_block": 1}, state)  # A block less.
  with pytest.raises(ValueError, match=r"decoder\.conv_in\.bias has shape \(64,\); "
                                       r"decoder/conv_in/bias needs \(48,\)"):
    weights.autoencoder_from_diffusers({**config, "block_out_channels": (32, 48)}, state)
  with pytest.raises(ValueError, match=r"\{'act_fn': 'relu', 'latents_mean': \[0\.0\]\}"):
    weights.autoencoder_from_diffusers({**config, "act_fn": "relu", "latents_mean": [0.0]}, state)
  with pytest.raises(ValueError, match="down_block_types .*jaxdiff imports 2 DownEncoderBlock2D"):
    weights.autoencoder_from_diffusers(
        {**config, "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")}, state)


def test_dit_latents_decode_with_imported_vae(tmp_path, small_vae):
  # The DiT-XL/2-256 recipe at toy size: a DiT on the VAE's latents, both from diffusers
  # folders, sampled here and decoded by decode(z / scaling_factor).
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  from jaxdiff import grids, schedules
  from jaxdiff.models import network_fn
  from jaxdiff.samplers import SAMPLERS
  torch_vae, vae_dir, _, _, _, decode = small_vae
  torch_model(diffusers.DiTTransformer2DModel, 6, num_attention_heads=2, attention_head_dim=8,
              in_channels=4, out_channels=8, num_layers=1, sample_size=8, patch_size=2,
              num_embeds_ada_norm=10).save_pretrained(tmp_path / "transformer",
                                                      safe_serialization=True)

  dit, dit_params = weights.load_diffusers(tmp_path / "transformer")
  vae, vae_params = weights.load_diffusers(vae_dir)
  process = schedules.discrete_ddpm("linear", 1000)  # DiT's training process.
  grid = grids.diffusers_spacing(1000, 4, "trailing")
  x_T = jax.random.normal(jax.random.PRNGKey(0), (2, *vae.latent_shape((16, 16, 3))))
  z, _ = SAMPLERS["ddim"](network_fn(dit, dit_params), process, x_T, jax.random.PRNGKey(1),
                          grid, cond=jnp.array([1, 7]))
  images = decode(vae_params, z / vae.scaling_factor)  # [2, 16, 16, 3]

  assert images.shape == (2, 16, 16, 3) and np.isfinite(np.asarray(images)).all()
  with torch.no_grad():
    expected = torch_vae.decode(torch.from_numpy(
        np.asarray(z).transpose(0, 3, 1, 2) / vae.scaling_factor)).sample
  assert_close(images, expected)
