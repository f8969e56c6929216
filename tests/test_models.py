"""Tests for the networks and classifier-free guidance: parameter counts of the
papers' configurations (by jax.eval_shape, nothing materialised; DiT's counted
layer by layer), zero output at initialisation where the papers zero-initialise,
live time and class embeddings, a finite forward + backward pass, dropout live
in training only, the layers' forward math written out in float64 numpy
(attention, the residual and attention blocks, the DiT block, the sinusoid;
without PyTorch), bfloat16 compute against float32, the XLA compiler options
(same results), the U-Net's ADM and DDPM++ options (skip rescaling, BigGAN
resampling blocks, Fourier time features; their diffusers parity is in
test_weights), classifier-free guidance (w = 0, 1 and beyond, one batched
call, independence of the prediction type, inside a sampler), and errors for
bad input.

Tiny configurations; every compiled function is shared across tests."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff import guidance, parameterization, samplers, schedules
from jaxdiff.models import (DIT_SIZES, DiT, UNet, compiler, compiler_options, dit,
                            network_fn, num_params)
from jaxdiff.models.dit import DiTBlock
from jaxdiff.models.layers import Attention, LabelEmbedding, TimeEmbedding, timestep_embedding
from jaxdiff.models.unet import AttnBlock, ResBlock
from jaxdiff.train import state as train_state, step

NUM_CLASSES = 10
B = 4  # Every compiled forward pass sees batch 4 (guided calls: 2 x 2).
VE = schedules.VE()
TINY_UNET = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, num_groups=8, num_classes=NUM_CLASSES)
MODELS = {
    "unet": UNet(attn_resolutions=(8,), **TINY_UNET),
    "dit": DiT(depth=2, hidden_size=32, num_heads=2, patch_size=2, in_channels=4,
               num_classes=NUM_CLASSES),
}
SHAPES = {"unet": (B, 16, 16, 3), "dit": (B, 8, 8, 4)}
STYLES = {  # The later U-Nets' options, on 8x8 inputs.
    # Dhariwal & Nichol's: 8-channel heads at two resolutions, AdaGN, BigGAN resampling.
    "adm": UNet(attn_resolutions=(8, 4), num_head_channels=8, scale_shift_norm=True,
                resblock_updown=True, **TINY_UNET),
    # Song et al.'s DDPM++ / NCSN++: BigGAN resampling, skip rescaling, Fourier features of
    # log sigma for the VE process (time_scale t + time_shift = log sigma(t)).
    "ddpmpp": UNet(attn_resolutions=(4,), resblock_updown=True, skip_rescale=True,
                   time_embedding="fourier", time_scale=math.log(VE.sigma_max / VE.sigma_min),
                   time_shift=math.log(VE.sigma_min), **TINY_UNET),
}


def inputs(name, seed=0):
  """x [B, H, W, C] (one image repeated), t [B], cond [B]."""
  x = jax.random.normal(jax.random.PRNGKey(seed), (1,) + SHAPES[name][1:])
  return jnp.repeat(x, B, axis=0), jnp.full((B,), 0.3, jnp.float32), jnp.full((B,), 3, jnp.int32)


def _normal(seed, shape):
  """float32 standard normals from numpy (no PRNG compilation for a new shape)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.cache
def init_params(name):
  x, t, cond = inputs(name)
  init = jax.jit(lambda key: MODELS[name].init(key, x, t, cond, deterministic=True)["params"])
  return init(jax.random.key(0, impl="rbg"))  # rbg: compiles faster than threefry on CPU.


@jax.jit
def perturb(params):
  """params plus a fixed pattern of size 0.1, so that no layer is zero."""
  leaves, tree = jax.tree.flatten(params)
  return jax.tree.unflatten(tree, [
      p + 0.1 * jnp.sin(1.7 * jnp.arange(p.size, dtype=jnp.float32) + i).reshape(p.shape)
      for i, p in enumerate(leaves)])


@functools.cache
def perturbed_params(name):
  """The initial parameters, perturbed."""
  return perturb(init_params(name))


def compile_quickly(fn, *args):
  """fn compiled for args with XLA's CPU backend optimisations off: a tiny graph run once
  costs its compilation, which this about halves."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


@functools.cache
def apply_fn(name, dtype=jnp.float32):
  model = MODELS[name].clone(dtype=dtype)
  return jax.jit(lambda params, x, t, cond: model.apply({"params": params}, x, t, cond,
                                                        deterministic=True))


# --------------------------------------------------------------------------
# The papers' configurations, by shape only.
# --------------------------------------------------------------------------


def count(model, shape, cond=True):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  t = jax.ShapeDtypeStruct(shape[:1], jnp.float32)
  y = jax.ShapeDtypeStruct(shape[:1], jnp.int32) if cond else None
  variables = jax.eval_shape(
      lambda x, t, y: model.init(jax.random.PRNGKey(0), x, t, y, deterministic=True), x, t, y)
  return num_params(variables["params"])


def test_unet_cifar10_has_ho_et_al_parameter_count():
  # diffusion_tf/models/unet.py with ch=128, ch_mult=(1,2,2,2), 2 blocks, attention at 16;
  # diffusers' UNet2DModel for google/ddpm-cifar10-32 has the same 35,746,307.
  assert count(UNet(), (1, 32, 32, 3), cond=False) == 35_746_307


def test_ddpmpp_cifar10_count_is_score_sdes_up_to_two_documented_details():
  # score_sde's DDPM++ CIFAR-10 (configs/vp/cifar10_ddpmpp_continuous.py built by
  # models/ncsnpp.py) has 61,804,419 parameters, counted from its source. The DDPM++-style
  # U-Net here keeps Ho et al.'s attention after every block on the way up (4 more at 16x16,
  # width 256) and identity shortcuts in its resampling blocks (score_sde: 1x1 convolutions,
  # down at widths 128, 256, 256 and up at 256, 256, 256).
  model = UNet(num_res_blocks=4, resblock_updown=True, skip_rescale=True)
  attention = lambda C: 2 * C + 4 * (C * C + C)  # GroupNorm; q, k, v and output projections.
  shortcut = lambda C: C * C + C
  assert count(model, (1, 32, 32, 3), cond=False) == 61_804_419 + 4 * attention(256) - sum(
      shortcut(C) for C in (128, 256, 256, 256, 256, 256))


PAPER_PARAMS = {"S": 33e6, "B": 130e6, "L": 458e6, "XL": 675e6}  # Peebles & Xie, Table 1
EXACT_PARAMS = {"S/2": 32_865_056, "B/2": 130_315_808, "L/2": 457_840_672,
                "XL/2": 674_834_720}


def dit_param_count(depth, hidden_size, patch_size, in_channels=4, num_classes=1000,
                    frequency_dim=256, mlp_ratio=4):
  """DiT's parameters, layer by layer (learned sigma; LayerNorms have no parameters)."""
  D, p, out = hidden_size, patch_size, 2 * in_channels
  dense = lambda n_in, n_out: n_in * n_out + n_out  # kernel + bias
  embed = (dense(p * p * in_channels, D)  # Patch embedding (a stride-p conv).
           + dense(frequency_dim, D) + dense(D, D)  # Time MLP.
           + (num_classes + 1) * D)  # Class table with the null class.
  block = (dense(D, 6 * D)  # adaLN-Zero modulation.
           + 4 * dense(D, D)  # q, k, v, out.
           + dense(D, mlp_ratio * D) + dense(mlp_ratio * D, D))
  final = dense(D, 2 * D) + dense(D, p * p * out)
  return embed + depth * block + final


@pytest.mark.parametrize("size", list(DIT_SIZES))
def test_dit_parameter_counts_are_exact(size):
  # ImageNet 256: 32x32x4 latents, 1000 classes, learned sigma. The layer-by-layer count
  # (XL/2: DiT's code's 675,129,632 less the frozen 256 x 1152 position embedding) and,
  # at 1%, the paper's rounded Table 1.
  n = count(dit(size), (1, 32, 32, 4))
  widths = DIT_SIZES[size]
  assert n == dit_param_count(widths["depth"], widths["hidden_size"], widths["patch_size"])
  if size in EXACT_PARAMS:
    assert n == EXACT_PARAMS[size]
  assert EXACT_PARAMS["XL/2"] + 256 * 1152 == 675_129_632  # DiT's code, with its pos_embed.
  assert abs(n / PAPER_PARAMS[size.split("/")[0]] - 1) < 0.01, n


# --------------------------------------------------------------------------
# Initialisation, embeddings, gradients, dtype.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_zero_initialised_output_layers_give_zero_output(name):
  # Ho et al. zero-init conv_out (and every residual branch's last layer); DiT's final
  # linear and adaLN modulations are zero (adaLN-Zero).
  x, t, cond = inputs(name)
  params = init_params(name)
  out = apply_fn(name)(params, x, t, cond)
  channels = SHAPES[name][-1] * (2 if name == "dit" else 1)  # DiT learns sigma.
  assert out.shape == SHAPES[name][:-1] + (channels,) and out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out))) == 0.0
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.mark.parametrize("name", list(MODELS))
def test_time_and_class_embeddings_are_alive(name):
  # One image, four (t, class) pairs: only t differs between rows 0 and 1, only the
  # class between 0 and 2, and row 3 is the null class.
  x, _, _ = inputs(name)
  t = jnp.array([0.1, 0.6, 0.1, 0.1])
  cond = jnp.array([3, 3, 5, NUM_CLASSES])
  out = apply_fn(name)(perturbed_params(name), x, t, cond)
  scale = float(jnp.std(out[0]))
  assert scale > 1e-3
  for row in (1, 2, 3):
    assert float(jnp.max(jnp.abs(out[row] - out[0]))) > 1e-2 * scale, row


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_with_dropout_and_remat_is_finite(name):
  model = MODELS[name].clone(remat=True)  # Same parameter tree, blocks rematerialised.
  x, t, cond = inputs(name)

  @jax.jit
  def loss_and_grad(params, key):
    def loss(params):
      out = model.apply({"params": params}, x, t, cond, deterministic=False,
                        rngs={"dropout": key})
      return jnp.mean(out**2)
    return jax.value_and_grad(loss)(params)

  value, grads = loss_and_grad(perturbed_params(name), jax.random.key(2, impl="rbg"))
  leaves = jax.tree.leaves(grads)
  assert np.isfinite(float(value)) and float(value) > 0
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.sum(g**2)) for g in leaves) > 0


def test_unet_dropout_is_active_only_in_training():
  """deterministic=False with rate 0.5: two dropout keys give two outputs; rate 0 in training
  mode is the deterministic network. A one-level U-Net (5 residual blocks, unconditional: no
  class dropout) with fixed nonzero parameters."""
  model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4,
               dropout=0.5)
  x, t = _normal(29, (2, 4, 4, 3)), np.array([0.3, 0.7], np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, deterministic=True))
  leaves, tree = jax.tree.flatten(shapes["params"])
  params = jax.tree.unflatten(tree, [  # perturb's pattern, in numpy: nothing to compile.
      0.3 * np.sin(1.7 * np.arange(p.size) + i).reshape(p.shape).astype(np.float32)
      for i, p in enumerate(leaves)])

  def train(params, key):
    return model.apply({"params": params}, x, t, deterministic=False, rngs={"dropout": key})

  def rate_0_and_deterministic(params, key):
    return (model.clone(dropout=0.0).apply({"params": params}, x, t, deterministic=False,
                                           rngs={"dropout": key}),
            model.apply({"params": params}, x, t, deterministic=True))

  key_1, key_2 = jax.random.key(3, impl="rbg"), jax.random.key(4, impl="rbg")
  train = compile_quickly(train, params, key_1)
  out_1, out_2 = np.asarray(train(params, key_1)), np.asarray(train(params, key_2))
  rate_0, deterministic = (np.asarray(out) for out in compile_quickly(
      rate_0_and_deterministic, params, key_1)(params, key_1))
  scale = deterministic.std()
  assert scale > 1e-2
  assert np.abs(out_1 - out_2).max() > 0.1 * scale
  assert np.abs(out_1 - deterministic).max() > 0.1 * scale
  np.testing.assert_allclose(rate_0, deterministic, rtol=1e-5, atol=1e-6 * scale)


def test_unet_bfloat16_compute_tracks_float32():
  x, t, cond = inputs("unet")
  params = perturbed_params("unet")
  out32 = apply_fn("unet")(params, x, t, cond)
  out16 = apply_fn("unet", jnp.bfloat16)(params, x, t, cond)
  assert out16.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(out16 - out32)) / jnp.max(jnp.abs(out32)))
  assert 0 < err < 0.05, err


# --------------------------------------------------------------------------
# The layers' forward math, written out in float64 numpy.
# --------------------------------------------------------------------------


def _np(tree):
  """A tree of arrays in float64 numpy."""
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _swish(x):
  return x / (1 + np.exp(-x))


def _conv3x3(x, p):
  """'SAME' 3x3 cross-correlation: [B, H, W, C] -> [B, H, W, C']."""
  H, W = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return p["bias"] + sum(padded[:, i:i + H, j:j + W] @ p["kernel"][i, j]
                         for i in range(3) for j in range(3))


def _group_norm(x, p, groups, eps):
  """Wu & He: mean and (biased) variance over H, W and the channels of each group."""
  B, H, W, C = x.shape
  g = x.reshape(B, H, W, groups, C // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * p["scale"] + p["bias"]


def _layer_norm(x, eps):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def _attention(x, p, heads):
  """Vaswani et al. eq. 1 per head: softmax(q k^T / sqrt(d)) v, d = C / heads; x [B, N, C]."""
  B, N, C = x.shape
  d = C // heads
  q, k, v = (_dense(x, p[name]).reshape(B, N, heads, d).transpose(0, 2, 1, 3)
             for name in ("q", "k", "v"))  # [B, heads, N, d]
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # [B, heads, N, N]
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return _dense((weights @ v).transpose(0, 2, 1, 3).reshape(B, N, C), p["out"])


def _assert_close(out, expected, rtol=1e-4):
  assert float(np.std(expected)) > 0.1  # Not a trivially small output.
  np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _perturbed_outputs(modules_and_args):
  """[(params, output)] of each (module, args), perturbed initial parameters, one compile."""
  def run(key):
    outputs = []
    for module, args in modules_and_args:
      params = perturb(module.init(key, *args)["params"])
      outputs.append((params, module.apply({"params": params}, *args)))
    return outputs

  key = jax.random.PRNGKey(21)
  return [_np(pair) for pair in compile_quickly(run, key)(key)]


def test_attention_is_scaled_dot_product_softmax():
  """Separate q, k, v projections, softmax(q k^T / sqrt(d)) v per head, the output
  projection: 1 and 2 heads against the numpy transcription."""
  x = _normal(20, (2, 6, 8))
  x64 = np.asarray(x, np.float64)
  outputs = _perturbed_outputs([(Attention(heads), (x,)) for heads in (1, 2)])
  for heads, (params, out) in zip((1, 2), outputs):
    _assert_close(out, _attention(x64, params, heads))


def test_resblock_and_attnblock_follow_ho_et_al():
  """h = conv1(swish(GN(x))); h = conv2(swish(GN(h + Dense(swish(temb))))); out = nin(x) + h,
  with AdaGN GN(h) (1 + y_s) + y_b instead for scale_shift_norm; x + Attn(GN(x))."""
  x = _normal(22, (2, 4, 4, 8))
  temb = _normal(23, (2, 12))
  x64, temb64 = np.asarray(x, np.float64), np.asarray(temb, np.float64)[:, None, None, :]
  kw = dict(num_groups=4, norm_eps=1e-6, dtype=jnp.float32)
  *resblocks, (p_attn, out_attn) = _perturbed_outputs(
      [(ResBlock(16, dropout=0.0, scale_shift_norm=adagn, **kw), (x, temb, True))
       for adagn in (False, True)] + [(AttnBlock(2, **kw), (x,))])
  for scale_shift_norm, (p, out) in zip((False, True), resblocks):
    h = _conv3x3(_swish(_group_norm(x64, p["norm1"], 4, 1e-6)), p["conv1"])
    emb = _dense(_swish(temb64), p["temb_proj"])
    if scale_shift_norm:
      y_s, y_b = emb[..., :16], emb[..., 16:]
      h = _group_norm(h, p["norm2"], 4, 1e-6) * (1 + y_s) + y_b
    else:
      h = _group_norm(h + emb, p["norm2"], 4, 1e-6)
    h = _conv3x3(_swish(h), p["conv2"])
    _assert_close(out, _dense(x64, p["nin_shortcut"]) + h)
  h = _attention(_group_norm(x64, p_attn["norm"], 4, 1e-6).reshape(2, 16, 8), p_attn["attn"], 2)
  _assert_close(out_attn, x64 + h.reshape(x.shape))


def test_dit_block_is_adaln_zero():
  """Peebles & Xie sec. 3.2: x + g_1 Attn(LN(x) (1 + s_1) + b_1), then
  x + g_2 MLP(LN(x) (1 + s_2) + b_2), (b_1, s_1, g_1, b_2, s_2, g_2) = Dense(swish(c))."""
  x = _normal(26, (2, 6, 8))
  c = _normal(27, (2, 8))
  block = DiTBlock(num_heads=2, mlp_ratio=4.0, norm_eps=1e-6, mlp_norm_eps=1e-5,
                   dtype=jnp.float32)
  [(p, out)] = _perturbed_outputs([(block, (x, c))])
  h = np.asarray(x, np.float64)
  mod = _dense(_swish(np.asarray(c, np.float64)), p["adaLN_modulation"])[:, None, :]
  b1, s1, g1, b2, s2, g2 = np.split(mod, 6, axis=-1)
  h = h + g1 * _attention(_layer_norm(h, 1e-6) * (1 + s1) + b1, p["attn"], 2)
  u = _dense(_layer_norm(h, 1e-5) * (1 + s2) + b2, p["mlp_fc1"])
  gelu = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
  _assert_close(out, h + g2 * _dense(gelu, p["mlp_fc2"]))


def test_timestep_embedding_is_the_sinusoid():
  """[sin, cos] (or [cos, sin]) of s 10000^(-k / (dim / 2 - shift)), k < dim / 2."""
  s = jnp.array([0.0, 3.0, 417.0])
  for freq_shift, flip in ((1.0, False), (0.0, True)):
    freqs = 10000.0 ** (-np.arange(4) / (4 - freq_shift))
    args = np.asarray(s, np.float64)[:, None] * freqs
    parts = [np.sin(args), np.cos(args)]
    expected = np.concatenate(parts[::-1] if flip else parts, axis=1)
    out = timestep_embedding(s, 8, freq_shift=freq_shift, flip_sin_to_cos=flip)
    np.testing.assert_allclose(out, expected, atol=2e-4)  # float32 arguments up to 417.


# --------------------------------------------------------------------------
# XLA compiler options: other kernels, the same results.
# --------------------------------------------------------------------------


def test_compiler_options_change_kernels_not_results():
  # A residual block (3x3 convolutions, GroupNorm, time embedding, the 1x1 shortcut): its
  # loss and gradient compiled with compiler_options() against XLA's defaults.
  if not compiler._cpu_accepts(tuple(compiler.CPU_OPTIONS.items())):
    pytest.skip(f"jax {jax.__version__}'s CPU compiler has no {compiler.YNN_FUSION_TYPE}")
  # Tests run on CPU, their XLA_FLAGS (conftest.TEST_XLA_FLAGS) without the option.
  assert compiler_options() == compiler.CPU_OPTIONS
  block = ResBlock(32, dropout=0.0, num_groups=8, norm_eps=1e-6, dtype=jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 16))
  temb = jax.random.normal(jax.random.PRNGKey(1), (B, 64))
  params = jax.jit(lambda key: perturb(block.init(key, x, temb, True)["params"]))(
      jax.random.key(2, impl="rbg"))
  loss = lambda params, x: jnp.mean(block.apply({"params": params}, x, temb, True)**2)
  lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x)
  value, grads = lowered.compile(compiler_options())(params, x)
  value_ref, grads_ref = lowered.compile()(params, x)
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_ref))
  for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * scale)


def test_compiler_options_are_left_out_off_cpu_under_user_flags_and_unknown_options(
    monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{compiler.YNN_FUSION_TYPE}=")
  assert compiler_options() == {}
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setattr(compiler, "CPU_OPTIONS", {compiler.YNN_FUSION_TYPE: "NO_SUCH_TYPE"})
  assert compiler_options() == {}
  monkeypatch.setattr(compiler, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})
  assert compiler_options() == {}
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert compiler_options() == {}


# --------------------------------------------------------------------------
# The U-Net's ADM and DDPM++ options.
# --------------------------------------------------------------------------


def test_resblock_updown_replaces_each_resampling_conv_by_a_residual_block():
  # The tiny U-Net resamples at width 16 (down) and 32 (up). A residual block C -> C has two
  # GroupNorms (2 C each), two 3x3 convs (9 C^2 + C each) and the time projection E -> C;
  # it replaces one 3x3 conv.
  E = 4 * TINY_UNET["ch"]
  conv = lambda C: 9 * C * C + C
  block = lambda C: 4 * C + 2 * conv(C) + E * C + C
  model = MODELS["unet"].clone(resblock_updown=True)
  assert count(model, SHAPES["unet"]) == count(MODELS["unet"], SHAPES["unet"]) + sum(
      block(C) - conv(C) for C in (16, 32))


@pytest.mark.parametrize("name", list(STYLES))
def test_later_unet_styles_start_at_zero_have_live_embeddings_and_gradients(name):
  # One compiled init + forward + backward: at init the output is exactly zero (conv_out and
  # every residual branch's last layer start at zero); perturbed, only t differs between
  # rows 0 and 1, only the class between 0 and 2, and row 3 is the null class.
  model = STYLES[name]
  x = jnp.repeat(jax.random.normal(jax.random.PRNGKey(13), (1, 8, 8, 3)), B, axis=0)
  t, cond = jnp.array([0.1, 0.6, 0.1, 0.1]), jnp.array([3, 3, 5, NUM_CLASSES])

  def init_and_train(key):
    out_init, variables = model.init_with_output(key, x, t, cond, deterministic=True)

    def loss(params):
      out = model.apply({"params": params}, x, t, cond, deterministic=True)
      return jnp.mean(out**2), out

    return out_init, jax.value_and_grad(loss, has_aux=True)(perturb(variables["params"]))

  key = jax.random.key(0, impl="rbg")
  out_init, ((value, out), grads) = compile_quickly(init_and_train, key)(key)
  assert out.shape == x.shape and float(jnp.max(jnp.abs(out_init))) == 0.0
  leaves = jax.tree.leaves(grads)
  assert np.isfinite(float(value)) and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert sum(float(jnp.sum(g**2)) for g in leaves) > 0
  scale = float(jnp.std(out[0]))
  assert scale > 1e-3
  for row in (1, 2, 3):
    assert float(jnp.max(jnp.abs(out[row] - out[0]))) > 1e-2 * scale, row


def test_ddpmpp_style_takes_several_resolutions():
  # Any resolution the multipliers divide, square or not (by shape only).
  for shape in ((2, 8, 8, 3), (2, 16, 24, 3), (2, 32, 32, 3)):
    x, t = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32)
    out, _ = jax.eval_shape(lambda x, t: STYLES["ddpmpp"].init_with_output(
        jax.random.PRNGKey(0), x, t, None, deterministic=True), x, t)
    assert out.shape == shape, (shape, out.shape)


def test_skip_rescale_divides_every_residual_sum_by_sqrt2():
  # Song et al. app. H: (x + F(x)) / sqrt(2), with the same parameters as x + F(x).
  x = jax.random.normal(jax.random.PRNGKey(9), (2, 4, 4, 16))
  temb = jax.random.normal(jax.random.PRNGKey(10), (2, 32))
  kw = dict(num_groups=4, norm_eps=1e-6, dtype=jnp.float32)
  blocks = ((ResBlock(16, 0.0, resample="down", **kw), (x, temb, True)),  # Identity shortcut.
            (ResBlock(32, 0.0, **kw), (x, temb, True)),  # 1x1 shortcut.
            (AttnBlock(2, **kw), (x,)))

  def both(key):
    pairs = []
    for block, args in blocks:
      params = perturb(block.init(key, *args)["params"])
      pairs.append((block.apply({"params": params}, *args),
                    block.clone(skip_rescale=True).apply({"params": params}, *args)))
    return pairs

  key = jax.random.PRNGKey(11)
  for plain, rescaled in compile_quickly(both, key)(key):
    assert float(jnp.std(plain)) > 0.1
    np.testing.assert_allclose(rescaled, plain / np.sqrt(2), rtol=1e-5, atol=1e-6)


def test_fourier_features_are_fixed_gaussian_frequencies_of_log_sigma():
  # Tancik et al.: [sin 2 pi W s, cos 2 pi W s] with W ~ N(0, 16^2) fixed (gradient stopped);
  # with the VE map of STYLES["ddpmpp"], s is log sigma(t) (score_sde's NCSN++ input).
  model = STYLES["ddpmpp"]
  embed = TimeEmbedding(8, 2048, model.time_scale, model.time_shift, freq_shift=1.0,
                        flip_sin_to_cos=False, fourier_scale=model.fourier_scale)
  t = jnp.array([0.1, 0.5, 0.9])

  @jax.jit
  def init_and_grad(key):
    params = embed.init(key, t)["params"]
    return params, jax.grad(lambda p: jnp.sum(embed.apply({"params": p}, t) ** 2))(params)

  params, grads = init_and_grad(jax.random.PRNGKey(12))
  assert params["W"].shape == (1024,)
  assert abs(float(jnp.std(params["W"])) / 16 - 1) < 0.1
  assert float(jnp.max(jnp.abs(grads["W"]))) == 0.0 and float(jnp.max(jnp.abs(
      grads["dense0"]["kernel"]))) > 0
  np.testing.assert_allclose(model.time_scale * t + model.time_shift, jnp.log(VE.sigma(t)),
                             rtol=1e-5, atol=1e-5)


def test_bad_unet_options_name_the_configuration():
  x, t, cond = inputs("unet")
  for options, match in (
      (dict(num_heads=3), r"UNet\(ch=16.* num_heads=3 cannot split its attention width 32"),
      (dict(num_head_channels=12),
       r"UNet\(ch=16.* num_head_channels=12 cannot split its attention width 32"),
      (dict(time_embedding="learned"), r"UNet\(ch=16.*time_embedding must be one of"),
      (dict(downsample_padding=1), r"UNet\(ch=16.*downsample_padding must be one of "
                                   r"\['same', 'symmetric'\], got 1")):
    model = MODELS["unet"].clone(**options)
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, cond, deterministic=True))


def test_class_dropout_replaces_ids_by_the_null_class():
  embed = LabelEmbedding(NUM_CLASSES, 8, dropout=0.5)
  cond = jnp.arange(64) % NUM_CLASSES
  params = embed.init(jax.random.PRNGKey(0), cond, 64, deterministic=True, config="test")
  table = params["params"]["embedding"]["embedding"]  # [NUM_CLASSES + 1, 8]
  out = embed.apply(params, cond, 64, deterministic=False, config="test",
                    rngs={"dropout": jax.random.PRNGKey(3)})
  dropped = np.all(np.asarray(out) == np.asarray(table[NUM_CLASSES]), axis=1)  # [64]
  np.testing.assert_array_equal(out[~dropped], table[cond[~dropped]])
  assert 16 <= dropped.sum() <= 48  # About half, for p = 0.5.
  np.testing.assert_array_equal(  # None: every example unconditional.
      embed.apply(params, None, 3, deterministic=True, config="test"),
      np.repeat(table[NUM_CLASSES:], 3, axis=0))


# --------------------------------------------------------------------------
# Classifier-free guidance.
# --------------------------------------------------------------------------


def counting(fn):
  """fn, recording the batch size of every call in `calls`."""
  calls = []

  def wrapped(x, t, cond):
    calls.append(x.shape[0])
    return fn(x, t, cond)

  return wrapped, calls


@pytest.mark.parametrize("name", list(MODELS))
def test_guidance_w0_is_unconditional_w1_conditional_in_one_call(name):
  params = perturbed_params(name)
  net = lambda x, t, cond: apply_fn(name)(params, x, t, cond)  # The batch-4 compiled pass.
  x, _, _ = inputs(name)
  x, t, cond = x[:2], jnp.array([0.2, 0.7]), jnp.array([1, 4])
  both = net(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
             jnp.array([1, 4, NUM_CLASSES, NUM_CLASSES]))
  for w, expected in ((0.0, both[2:]), (1.0, both[:2])):
    fn, calls = counting(net)
    guided = guidance.guided_denoise_fn(fn, w, NUM_CLASSES)(x, t, cond)
    assert calls == [4]
    np.testing.assert_allclose(guided, expected, atol=1e-6)


def test_guidance_beyond_one_and_below_zero_extrapolates_linearly():
  """D_w = D_null + w (D_cond - D_null) at w = 3, 7.5 and -0.5 (Ho & Salimans eq. 6,
  w = 1 + w'), a scalar w and a per-example [B] one, against the formula in float64."""
  net = lambda x, t, cond: jnp.sin(x * (1.0 + cond[:, None])) + t[:, None]
  x = _normal(14, (3, 5))
  t, cond = jnp.array([0.2, 0.5, 0.9]), jnp.array([1.0, 2.0, -0.5])
  x64, t64 = np.asarray(x, np.float64), np.asarray(t, np.float64)[:, None]
  d_cond = np.sin(x64 * (1.0 + np.asarray(cond, np.float64)[:, None])) + t64
  d_null = np.sin(x64 * 1.0) + t64  # null_cond = 0.
  for w in (3.0, 7.5, -0.5, np.array([3.0, 0.0, 7.5])):
    guided = guidance.guided_denoise_fn(net, w, 0.0)(x, t, cond)
    expected = d_null + np.reshape(w, (-1, 1)) * (d_cond - d_null)
    np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5, err_msg=str(w))


def test_guidance_is_independent_of_the_prediction_type():
  # Guiding eps then converting to x0 / v / velocity / score == converting both branches,
  # then guiding (each conversion is affine in the output at fixed x_t, t).
  process = schedules.make_process("ddpm")
  eps_net = lambda x, t, cond: jnp.tanh(x + cond[:, None]) * (1 + t[:, None])
  w = jnp.array([0.0, 3.0, 7.5])

  @jax.jit
  def both_ways(x, t, cond):
    guided_eps = guidance.guided_denoise_fn(eps_net, w, 0.0)(x, t, cond)
    pairs = {}
    for target in ("x0", "v", "velocity", "score"):
      net = lambda x, t, c, target=target: parameterization.convert(
          process, eps_net(x, t, c), x, t, "eps", target)
      pairs[target] = (guidance.guided_denoise_fn(net, w, 0.0)(x, t, cond),
                       parameterization.convert(process, guided_eps, x, t, "eps", target))
    return pairs

  x = jax.random.normal(jax.random.PRNGKey(4), (3, 5))
  pairs = both_ways(x, jnp.array([0.2, 0.5, 0.9]), jnp.array([1.0, 2.0, -1.0]))
  for target, (guided, expected) in pairs.items():
    np.testing.assert_allclose(guided, expected, rtol=1e-4, atol=1e-4, err_msg=target)


def test_guided_dit_drives_a_sampler_with_one_call_per_step():
  # network_fn keeps the prediction half of the DiT's learned-sigma output.
  process = schedules.make_process("ddpm")
  fn, calls = counting(network_fn(MODELS["dit"], perturbed_params("dit")))
  guided = guidance.guided_denoise_fn(fn, 3.0, NUM_CLASSES)
  x_T = jax.random.normal(jax.random.PRNGKey(5), (2,) + SHAPES["dit"][1:])
  grid = jnp.array([1.0, 0.5, 0.001])
  x_0, info = samplers.ddim(guided, process, x_T, jax.random.PRNGKey(6), grid,
                            cond=jnp.array([0, 9]))
  assert int(info["nfe"]) == 2 and calls == [4]  # Traced once inside the scan, batch 2B.
  assert x_0.shape == x_T.shape and bool(jnp.all(jnp.isfinite(x_0)))


def test_the_train_step_fits_only_the_prediction_half_of_a_learned_sigma_dit():
  # With one channel, a loss handed the DiT's 2C outputs would broadcast them against the
  # target and silently train the variance half too; network_fn hands it the first C.
  model = MODELS["dit"].clone(in_channels=1)
  x, t, cond = inputs("dit")
  x = x[..., :1]
  params = perturb(jax.jit(lambda key: model.init(key, x, t, cond, deterministic=True)[
      "params"])(jax.random.key(0, impl="rbg")))
  objective = step.Objective(schedules.make_process("ddpm"))
  optimizer = optax.sgd(1.0)
  train_step = jax.jit(step.make_train_step(model, objective, optimizer, lambda _: 1.0, (0.5,),
                                            conditional=True))
  state = train_state.create(params, optimizer, (0.5,), jax.random.PRNGKey(1))
  new_state, _ = train_step(state, {"image": x[None], "label": cond[None]})
  # final_linear's columns are (patch row, patch column, channel): channel 1 is the variance.
  moved = new_state.params["final_linear"]["kernel"] - params["final_linear"]["kernel"]
  moved = moved.reshape(moved.shape[0], -1, 2)
  assert float(jnp.max(jnp.abs(moved[..., 0]))) > 0
  assert float(jnp.max(jnp.abs(moved[..., 1]))) == 0


def test_guidance_sweep_shares_start_and_noise_across_scales():
  process = schedules.make_process("ddpm")
  net = lambda x, t, cond: jnp.tanh(x + cond[:, None]) * t[:, None]
  x_T = jax.random.normal(jax.random.PRNGKey(7), (3, 2))
  key, grid, cond = jax.random.PRNGKey(8), jnp.array([1.0, 0.6, 0.2, 0.001]), jnp.array([1, 2, 3])
  scales = jnp.array([1.0, 4.0])
  samples, info = jax.jit(lambda x_T, key, grid: guidance.guidance_sweep(
      samplers.ddpm, net, process, x_T, key, grid, cond=cond, scales=scales, null_cond=0))(
          x_T, key, grid)
  assert samples.shape == (2, 3, 2) and list(info["nfe"]) == [3, 3]
  alone = jax.jit(lambda w: samplers.ddpm(guidance.guided_denoise_fn(net, w, 0), process, x_T,
                                          key, grid, cond=cond)[0])
  for s, w in enumerate(scales):  # Row s is the run at w alone with the same x_T and key.
    np.testing.assert_allclose(samples[s], alone(w), atol=1e-5)


def test_guidance_needs_a_condition():
  fn = guidance.guided_denoise_fn(lambda x, t, c: x, 2.0, NUM_CLASSES)
  with pytest.raises(ValueError, match="needs a condition"):
    fn(jnp.zeros((2, 3)), jnp.zeros(2), None)


# --------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, match", [
    ("unet", (B, 15, 16, 3), r"UNet\(ch=16.*multiples of 2 \(it halves the resolution 1 t"),
    ("unet", (B, 16, 16, 4), r"UNet\(ch=16.*\[B, H, W, 3\]"),
    ("dit", (B, 9, 8, 4), r"DiT\(depth=2.*multiples of 2 \(the patch size\); got 9x8"),
    ("dit", (B, 8, 8, 3), r"DiT\(depth=2.*\[B, H, W, 4\]"),
])
def test_bad_shapes_name_the_configuration(name, shape, match):
  _, t, cond = inputs(name)
  with pytest.raises(ValueError, match=match):
    MODELS[name].apply({"params": init_params(name)}, jnp.zeros(shape), t, cond,
                       deterministic=True)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("bad", [NUM_CLASSES + 1, -1])
def test_class_ids_out_of_range_are_refused(name, bad):
  x, t, _ = inputs(name)
  with pytest.raises(ValueError, match=r"class ids must lie in \[0, 10\]"):
    MODELS[name].apply({"params": init_params(name)}, x, t, jnp.full((B,), bad),
                       deterministic=True)


def test_unconditional_model_refuses_a_condition_and_unknown_sizes_are_refused():
  model = MODELS["unet"].clone(num_classes=None)
  x, t, cond = inputs("unet")
  with pytest.raises(ValueError, match="unconditional"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, cond, deterministic=True))
  with pytest.raises(ValueError, match="unknown DiT size 'M/2'"):
    dit("M/2")
