"""Tests for the KL autoencoder (`jaxdiff.models.autoencoder`): shapes, the posterior
and its reparameterised sample, the latent-shape check, and Stable Diffusion's VAE
parameter count. Parity with diffusers on random weights is in test_weights.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import AutoencoderKL, make_model, num_params

# diffusers 0.42's AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
# down/up blocks DownEncoderBlock2D / UpDecoderBlock2D x 4, latent_channels=4,
# norm_num_groups=32): sum(p.numel() for p in model.parameters()), random init in PyTorch.
SD_VAE_PARAMETERS = 83_653_863


def test_autoencoder_encodes_samples_and_decodes():
  model = make_model("autoencoder_kl", block_out_channels=(8, 16), norm_num_groups=4,
                     in_channels=1, out_channels=2, latent_channels=3)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 12, 1), minval=-1, maxval=1)
  # Random parameters drawn in numpy: compiling model.init would cost more than the test.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.2, p.shape), jnp.float32),
                        jax.eval_shape(model.init, jax.random.PRNGKey(1), x)["params"])
  eps = jax.random.normal(jax.random.PRNGKey(2), (2, *model.latent_shape((8, 12, 1))))

  @jax.jit
  def run(params):
    apply = lambda *args, **kw: model.apply({"params": params}, *args, **kw)
    recon, mean, logvar = apply(x, eps)
    z = mean + jnp.exp(logvar / 2) * eps  # A sample of q(z | x) = N(mean, exp(logvar)).
    return recon, mean, logvar, apply(z, method="decode"), apply(mean, method="decode")

  recon, mean, logvar, decoded, decoded_mean = run(params)
  assert mean.shape == logvar.shape == eps.shape == (2, 4, 6, 3) and recon.shape == (2, 8, 12, 2)
  np.testing.assert_allclose(recon, decoded, atol=1e-5)
  assert np.abs(np.asarray(decoded_mean - recon)).max() > 1e-3  # The sample is not the mode.
  # The log-variance is clipped as diffusers' DiagonalGaussianDistribution clips it.
  params["quant_conv"]["bias"] = jnp.array([0, 0, 0, -1e3, 1e3, 0.0])
  logvar = run(params)[2]
  assert (logvar[..., 0] == -30).all() and (logvar[..., 1] == 20).all()


def test_autoencoder_refuses_bad_shapes():
  model = AutoencoderKL(block_out_channels=(8, 16, 16), norm_num_groups=4)
  assert model.latent_shape((32, 64, 3)) == (8, 16, 4)
  with pytest.raises(ValueError, match="downsamples by f=4.*got 30x32"):
    model.latent_shape((30, 32, 3))
  with pytest.raises(ValueError, match="multiples of 4.*got 8x6"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 6, 3)))
  with pytest.raises(ValueError, match="multiple of norm_num_groups=4, got \\(8, 6\\)"):
    AutoencoderKL(block_out_channels=(8, 6), norm_num_groups=4).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="unknown \\['ch'\\]"):
    make_model("autoencoder_kl", ch=8)


def test_stable_diffusion_vae_has_diffusers_parameter_count():
  model = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  assert num_params(shapes["params"]) == SD_VAE_PARAMETERS
  assert model.latent_shape((256, 256, 3)) == (32, 32, 4)
