"""Import of diffusers checkpoints into the Flax networks of `jaxdiff.models`.

Supported: `UNet2DModel` in the DDPM configuration family (Ho et al. 2020's
U-Net as converted by diffusers, e.g. google/ddpm-cifar10-32; unconditional or
class-conditional, see Classes below; in Ho et al.'s conventions, freq_shift 1,
flip_sin_to_cos False and downsample_padding 0, in diffusers' defaults, those
of the models its training scripts make, freq_shift 0, flip_sin_to_cos True
and downsample_padding 1, or any mix of them (see `UNet`'s time_freq_shift,
time_flip_sin_to_cos and downsample_padding); with the ADM options of
Dhariwal & Nichol 2021: resnet_time_scale_shift "scale_shift", multi-head
attention by attention_head_dim, and residual resampling blocks,
downsample_type and upsample_type "resnet" with ResnetDownsampleBlock2D /
ResnetUpsampleBlock2D levels) -> `UNet`, and
`DiTTransformer2DModel` (facebook/DiT-XL-2-256 ...) -> `DiT`, and
`AutoencoderKL` (Stable Diffusion's VAE: stabilityai/sd-vae-ft-ema,
facebook/DiT-XL-2-256/vae ...) -> `AutoencoderKL`, its scaling_factor and
shift_factor from config.json; checkpoints saved before diffusers renamed
the VAE's attention (query, key, value, proj_attn) import too. Weights are
read from safetensors files only: nothing is ever unpickled.

Every name is mapped in one place, `_unet_modules` / `_dit_modules` /
`_autoencoder_modules`: a flat
dict from each Flax module path to the diffusers module prefix and the layer
kind, whose `_LEAVES` entry renames and transposes its parameters (PyTorch
convolutions are [out, in, kh, kw], Flax's [kh, kw, in, out]; linear layers
[out, in] against [in, out]). The import fails, naming the key, if a
checkpoint tensor is missing, left over or of the wrong shape.

Time. diffusers (like Ho et al. and DiT) embeds the integer step
n = 0 .. T - 1, while jaxdiff's DiscreteDDPM puts that step at t = (n + 1) / T;
the imported networks therefore embed T t - 1 (time_scale = T,
time_shift = -1): call them with jaxdiff times and they see diffusers' n.
The U-Net's sinusoid (frequency shift and [sin, cos] order) is read from the
UNet2DModel config. Two settings of the DiT follow diffusers where it departs
from the DiT paper's code: the time embedding's frequencies (freq_shift 1) and
the epsilon of the LayerNorm before each MLP (its norm_eps).

Classes. A class-conditional UNet2DModel (class_embed_type None,
num_class_embeds K) adds row y of a K-row table to the time embedding and has
no null class: models trained for classifier-free guidance reserve an id for
it, by convention the last. The import keeps the table as it is, so it becomes
the UNet with num_classes = K - 1, whose K rows are ids 0 .. K - 1 in both
libraries and whose null id (cond=None, class dropout, guidance's
unconditional half) is diffusers' last id K - 1. For a checkpoint that trained
all K ids as classes, id K - 1 still gives that class, but cond=None and
guidance then mean it too: such a model has no unconditional prediction, and
none is invented. Other class_embed_types are refused.

Latent models. DiT-XL/2-256 denoises Stable Diffusion's VAE latents (32x32x4
for 256x256 images); with the hub folders downloaded by the user
(facebook/DiT-XL-2-256: transformer/ and vae/, or stabilityai/sd-vae-ft-ema):

  dit, dit_params = load_diffusers("DiT-XL-2-256/transformer")
  vae, vae_params = load_diffusers("DiT-XL-2-256/vae")
  process = schedules.discrete_ddpm("linear", 1000)
  x_T = jax.random.normal(key, (B, *vae.latent_shape((256, 256, 3))))
  z, _ = SAMPLERS["ddim"](network_fn(dit, dit_params), process, x_T, key,
                          grids.diffusers_spacing(1000, 50, "trailing"), cond=labels)
  images = vae.apply({"params": vae_params}, z / vae.scaling_factor, method="decode")

(images [B, 256, 256, 3] in about [-1, 1]; a VAE with a shift_factor decodes
z / scaling_factor + shift_factor.) tests/test_weights.py runs this at toy size.
"""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from jaxdiff.models import dit as dit_lib
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.dit import DiT
from jaxdiff.models.unet import UNet

# Layer kind -> {Flax parameter: (diffusers parameter, conversion of the array)}.
_LEAVES = {
    "conv": {"kernel": ("weight", lambda w: w.transpose(2, 3, 1, 0)), "bias": ("bias", None)},
    "dense": {"kernel": ("weight", lambda w: w.T), "bias": ("bias", None)},
    "conv1x1": {"kernel": ("weight", lambda w: w[:, :, 0, 0].T), "bias": ("bias", None)},
    "norm": {"scale": ("weight", None), "bias": ("bias", None)},
    "embed": {"embedding": ("weight", None)},
}
_RES_BLOCK = {"norm1": ("norm1", "norm"), "conv1": ("conv1", "conv"),
              "temb_proj": ("time_emb_proj", "dense"), "norm2": ("norm2", "norm"),
              "conv2": ("conv2", "conv"), "nin_shortcut": ("conv_shortcut", "conv1x1")}
_ATTENTION = {"q": ("to_q", "dense"), "k": ("to_k", "dense"), "v": ("to_v", "dense"),
              "out": ("to_out.0", "dense")}
_ATTN_BLOCK = {"norm": ("group_norm", "norm"),
               **{f"attn/{k}": (name, kind) for k, (name, kind) in _ATTENTION.items()}}

# diffusers' defaults for the config keys read here (a saved config may omit them).
_UNET_DEFAULTS = dict(
    in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True, mid_block_type="UNetMidBlock2D",
    layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1, downsample_type="conv",
    upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8, norm_num_groups=32,
    attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None)
_DIT_DEFAULTS = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=None,
    num_layers=28, attention_bias=True, patch_size=2, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
    norm_eps=1e-5)
_AUTOENCODER_DEFAULTS = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
    act_fn="silu", latent_channels=4, norm_num_groups=32, scaling_factor=0.18215,
    shift_factor=None, latents_mean=None, latents_std=None, use_quant_conv=True,
    use_post_quant_conv=True, mid_block_add_attention=True)
# What Ho et al.'s architecture (the `UNet` here), DiT's and the KL autoencoder's fix.
_UNET_REQUIRED = dict(
    center_input_sample=False, time_embedding_type="positional",
    mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1,
    act_fn="silu", add_attention=True, class_embed_type=None)
# downsample_type -> (what else it fixes, the down and up block types of levels without
# attention): strided convolutions (Ho et al.) or residual blocks (UNet.resblock_updown).
_UNET_RESAMPLING = {
    "conv": (dict(upsample_type="conv"), ("DownBlock2D", "UpBlock2D")),
    "resnet": (dict(upsample_type="resnet"), ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D")),
}
_UNET_TIME_SHIFTS = {"default": False, "scale_shift": True}  # -> UNet.scale_shift_norm
# downsample_padding of the strided convolutions (downsample_type "conv") -> the UNet's.
_UNET_DOWNSAMPLE_PADDINGS = {0: "same", 1: "symmetric"}
_DIT_REQUIRED = dict(attention_bias=True, activation_fn="gelu-approximate",
                     norm_type="ada_norm_zero", norm_elementwise_affine=False)
_AUTOENCODER_REQUIRED = dict(act_fn="silu", latents_mean=None, latents_std=None)


def _with_defaults(config, defaults, required, class_name):
  """config over diffusers' defaults; ValueError naming every unsupported setting."""
  config = {**defaults, **config}
  bad = {k: config[k] for k, v in required.items() if config[k] != v}
  if bad:
    raise ValueError(f"unsupported {class_name} configuration {bad}; jaxdiff imports "
                     f"{ {k: required[k] for k in bad} }")
  return config


def _unet_from_config(config, num_train_timesteps):
  """The `UNet` equivalent to a diffusers UNet2DModel config."""
  resampling = {**_UNET_DEFAULTS, **config}["downsample_type"]
  if resampling not in _UNET_RESAMPLING:
    raise ValueError(f"unsupported UNet2DModel downsample_type {resampling!r}; jaxdiff imports "
                     f"{list(_UNET_RESAMPLING)}")
  required, (plain_down, plain_up) = _UNET_RESAMPLING[resampling]
  c = _with_defaults(config, _UNET_DEFAULTS, {**_UNET_REQUIRED, **required}, "UNet2DModel")
  widths = list(c["block_out_channels"])
  ch = widths[0]
  levels = len(widths)
  down = list(c["down_block_types"])
  attn_levels = [b == "AttnDownBlock2D" for b in down]
  expected_up = ["AttnUpBlock2D" if a else plain_up for a in reversed(attn_levels)]
  if any(b not in (plain_down, "AttnDownBlock2D") for b in down) or \
      list(c["up_block_types"]) != expected_up or any(w % ch for w in widths):
    raise ValueError("unsupported UNet2DModel blocks: down_block_types "
                     f"{c['down_block_types']}, up_block_types {c['up_block_types']}, "
                     f"block_out_channels {widths}; with downsample_type {resampling!r} jaxdiff "
                     f"imports {plain_down} / AttnDownBlock2D levels, the mirrored {plain_up} / "
                     "AttnUpBlock2D levels and widths multiple of the first")
  if c["time_embedding_dim"] not in (None, 4 * ch):
    raise ValueError(f"unsupported UNet2DModel time_embedding_dim {c['time_embedding_dim']}; "
                     f"jaxdiff's is 4 x {ch}")
  if c["resnet_time_scale_shift"] not in _UNET_TIME_SHIFTS:
    raise ValueError(f"unsupported UNet2DModel resnet_time_scale_shift "
                     f"{c['resnet_time_scale_shift']!r}; jaxdiff imports {list(_UNET_TIME_SHIFTS)}")
  scale_shift_norm = _UNET_TIME_SHIFTS[c["resnet_time_scale_shift"]]
  # Only strided convolutions read downsample_padding: residual ones (downsample_type
  # "resnet") average-pool, and the UNet's field stays at its default.
  downsample_padding = "same"
  if resampling == "conv":
    if c["downsample_padding"] not in _UNET_DOWNSAMPLE_PADDINGS:
      raise ValueError(f"unsupported UNet2DModel downsample_padding {c['downsample_padding']!r}; "
                       f"jaxdiff imports {list(_UNET_DOWNSAMPLE_PADDINGS)}")
    downsample_padding = _UNET_DOWNSAMPLE_PADDINGS[c["downsample_padding"]]
  # diffusers' mid-block attention has no GroupNorm for "scale_shift" unless given its groups.
  mid_groups = c["attn_norm_num_groups"]
  if mid_groups is None and not scale_shift_norm:
    mid_groups = c["norm_num_groups"]
  if mid_groups != c["norm_num_groups"]:
    raise ValueError(f"unsupported UNet2DModel attn_norm_num_groups {c['attn_norm_num_groups']} "
                     f"with resnet_time_scale_shift {c['resnet_time_scale_shift']!r}: jaxdiff's "
                     f"mid-block attention has a GroupNorm of norm_num_groups="
                     f"{c['norm_num_groups']} groups")
  size = c.get("sample_size")
  size = size[0] if isinstance(size, (list, tuple)) else size
  if not isinstance(size, int):
    raise ValueError(f"UNet2DModel config needs an integer sample_size, got {size!r}")
  num_class_embeds = c["num_class_embeds"]
  if num_class_embeds is not None and num_class_embeds < 2:
    raise ValueError(f"unsupported UNet2DModel num_class_embeds {num_class_embeds}: jaxdiff "
                     "maps the last class id to its null class, so it needs at least 2")
  return UNet(ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=c["layers_per_block"],
              attn_resolutions=tuple(size >> l for l in range(levels) if attn_levels[l]),
              dropout=c["dropout"], channels=c["in_channels"],
              out_channels=None if c["out_channels"] == c["in_channels"] else c["out_channels"],
              num_classes=None if num_class_embeds is None else num_class_embeds - 1,
              num_groups=c["norm_num_groups"], norm_eps=c["norm_eps"],
              num_head_channels=c["attention_head_dim"], scale_shift_norm=scale_shift_norm,
              resblock_updown=resampling == "resnet",
              downsample_padding=downsample_padding,
              time_scale=float(num_train_timesteps), time_shift=-1.0,
              time_freq_shift=float(c["freq_shift"]),
              time_flip_sin_to_cos=bool(c["flip_sin_to_cos"]))


def _unet_modules(model: UNet):
  """Flax module path -> (diffusers module prefix, layer kind), for the whole U-Net."""
  modules = {"conv_in": ("conv_in", "conv"), "norm_out": ("conv_norm_out", "norm"),
             "conv_out": ("conv_out", "conv"),
             "time_embed/dense0": ("time_embedding.linear_1", "dense"),
             "time_embed/dense1": ("time_embedding.linear_2", "dense"),
             "class_embed/embedding": ("class_embedding", "embed")}

  def add(flax_prefix, torch_prefix, table):
    modules.update({f"{flax_prefix}/{k}": (f"{torch_prefix}.{name}", kind)
                    for k, (name, kind) in table.items()})

  levels = len(model.ch_mult)
  for level in range(levels):
    down, up = f"down_blocks.{level}", f"up_blocks.{levels - 1 - level}"
    for i in range(model.num_res_blocks + 1):
      add(f"up_{level}_block_{i}", f"{up}.resnets.{i}", _RES_BLOCK)
      add(f"up_{level}_attn_{i}", f"{up}.attentions.{i}", _ATTN_BLOCK)
      if i < model.num_res_blocks:
        add(f"down_{level}_block_{i}", f"{down}.resnets.{i}", _RES_BLOCK)
        add(f"down_{level}_attn_{i}", f"{down}.attentions.{i}", _ATTN_BLOCK)
    if model.resblock_updown:
      add(f"down_{level}_downsample", f"{down}.downsamplers.0", _RES_BLOCK)
      add(f"up_{level}_upsample", f"{up}.upsamplers.0", _RES_BLOCK)
    else:
      modules[f"down_{level}_downsample"] = (f"{down}.downsamplers.0.conv", "conv")
      modules[f"up_{level}_upsample"] = (f"{up}.upsamplers.0.conv", "conv")
  add("mid_block_1", "mid_block.resnets.0", _RES_BLOCK)
  add("mid_attn", "mid_block.attentions.0", _ATTN_BLOCK)
  add("mid_block_2", "mid_block.resnets.1", _RES_BLOCK)
  return modules


def _dit_from_config(config, num_train_timesteps):
  """The `DiT` equivalent to a diffusers DiTTransformer2DModel config."""
  c = _with_defaults(config, _DIT_DEFAULTS, _DIT_REQUIRED, "DiTTransformer2DModel")
  out_channels = c["out_channels"] or c["in_channels"]
  if out_channels not in (c["in_channels"], 2 * c["in_channels"]):
    raise ValueError(f"unsupported DiTTransformer2DModel out_channels {out_channels} for "
                     f"in_channels {c['in_channels']}: jaxdiff's DiT outputs C or 2C")
  return DiT(depth=c["num_layers"], hidden_size=c["num_attention_heads"] * c["attention_head_dim"],
             num_heads=c["num_attention_heads"], patch_size=c["patch_size"],
             in_channels=c["in_channels"], learn_sigma=out_channels == 2 * c["in_channels"],
             num_classes=c["num_embeds_ada_norm"], time_scale=float(num_train_timesteps),
             time_shift=-1.0, time_freq_shift=1.0, norm_eps=1e-6, mlp_norm_eps=c["norm_eps"])


_DIT_EMBEDDERS = "norm1.emb."  # diffusers repeats the (t, y) embedders in every block.


def _dit_modules(model: DiT):
  """Flax module path -> (diffusers module prefix, layer kind), for the whole DiT."""
  emb = f"transformer_blocks.0.{_DIT_EMBEDDERS}"
  modules = {"patch_embed": ("pos_embed.proj", "conv"),
             "t_embed/dense0": (f"{emb}timestep_embedder.linear_1", "dense"),
             "t_embed/dense1": (f"{emb}timestep_embedder.linear_2", "dense"),
             "y_embed/embedding": (f"{emb}class_embedder.embedding_table", "embed"),
             "final_adaLN_modulation": ("proj_out_1", "dense"),
             "final_linear": ("proj_out_2", "dense")}
  for i in range(model.depth):
    block = f"transformer_blocks.{i}"
    modules.update({f"block_{i}/adaLN_modulation": (f"{block}.norm1.linear", "dense"),
                    f"block_{i}/mlp_fc1": (f"{block}.ff.net.0.proj", "dense"),
                    f"block_{i}/mlp_fc2": (f"{block}.ff.net.2", "dense")})
    modules.update({f"block_{i}/attn/{k}": (f"{block}.attn1.{name}", kind)
                    for k, (name, kind) in _ATTENTION.items()})
  return modules


def _dit_shared_keys(state, model: DiT):
  """Block i > 0's copies of the (t, y) embedders: checked equal to block 0's, then dropped."""
  keys = []
  for key in state:
    block, _, rest = key.partition(f".{_DIT_EMBEDDERS}")
    if rest and block != "transformer_blocks.0":
      reference = f"transformer_blocks.0.{_DIT_EMBEDDERS}{rest}"
      if reference not in state or not np.array_equal(state[key], state[reference]):
        raise ValueError(f"{key} differs from {reference}: jaxdiff's DiT has one time and class "
                         "embedder shared by all blocks (as in the DiT paper's checkpoints)")
      keys.append(key)
  if "pos_embed.pos_embed" in state:  # A buffer: must be the fixed embedding.
    D, N = model.hidden_size, state["pos_embed.pos_embed"].shape[1]
    grid = int(round(N**0.5))
    if not np.allclose(state["pos_embed.pos_embed"][0],
                       dit_lib.sincos_pos_embed(D, grid, grid), atol=1e-5):
      raise ValueError("pos_embed.pos_embed is not the fixed 2-D sin-cos embedding")
    keys.append("pos_embed.pos_embed")
  return keys


def _denoiser_inputs(example_shape):
  """Shapes of a denoiser's (x, t) for one image of example_shape [1, H, W, C]."""
  return (jax.ShapeDtypeStruct(example_shape, jnp.float32),
          jax.ShapeDtypeStruct(example_shape[:1], jnp.float32))


def _params_from_state(model, modules, state, example_inputs, ignored=()):
  """The Flax params tree of `model` (called on example_inputs, ShapeDtypeStructs) filled
  from a diffusers state dict (name -> array)."""
  shapes = jax.eval_shape(lambda *inputs: model.init(jax.random.PRNGKey(0), *inputs,
                                                     deterministic=True), *example_inputs)["params"]
  params, used = {}, set(ignored)
  for path, expected in traverse_util.flatten_dict(shapes, sep="/").items():
    module, leaf = path.rsplit("/", 1)
    if module not in modules:
      raise ValueError(f"no diffusers name is mapped for the Flax module {module!r}")
    prefix, kind = modules[module]
    name, convert = _LEAVES[kind][leaf]
    key = f"{prefix}.{name}"
    if key not in state:
      raise ValueError(f"the checkpoint lacks {key} (for {path}, shape {expected.shape})")
    value = np.asarray(state[key], np.float32)
    value = convert(value) if convert else value
    if value.shape != expected.shape:
      raise ValueError(f"{key} has shape {state[key].shape}; {path} needs {expected.shape}")
    params[path] = jnp.asarray(value)
    used.add(key)
  left = sorted(set(state) - used)
  if left:
    raise ValueError(f"{len(left)} checkpoint tensors have no place in {model.describe()}: "
                     + ", ".join(f"{k} {tuple(state[k].shape)}" for k in left[:8]))
  return traverse_util.unflatten_dict(params, sep="/")


def unet_from_diffusers(config: dict, state: dict, num_train_timesteps: int = 1000):
  """(UNet, params) from a diffusers UNet2DModel config and state dict (name -> array)."""
  model = _unet_from_config(config, num_train_timesteps)
  size = config["sample_size"]
  size = size[0] if isinstance(size, (list, tuple)) else size
  return model, _params_from_state(model, _unet_modules(model), state,
                                   _denoiser_inputs((1, size, size, model.channels)))


def dit_from_diffusers(config: dict, state: dict, num_train_timesteps: int = 1000):
  """(DiT, params) from a diffusers DiTTransformer2DModel config and state dict."""
  model = _dit_from_config(config, num_train_timesteps)
  size = config.get("sample_size", 32)
  return model, _params_from_state(model, _dit_modules(model), state,
                                   _denoiser_inputs((1, size, size, model.in_channels)),
                                   ignored=_dit_shared_keys(state, model))


def _autoencoder_from_config(config):
  """The `AutoencoderKL` equivalent to a diffusers AutoencoderKL config."""
  c = _with_defaults(config, _AUTOENCODER_DEFAULTS, _AUTOENCODER_REQUIRED, "AutoencoderKL")
  levels = len(c["block_out_channels"])
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  if down != ["DownEncoderBlock2D"] * levels or up != ["UpDecoderBlock2D"] * levels:
    raise ValueError(f"unsupported AutoencoderKL blocks: down_block_types {down}, "
                     f"up_block_types {up}; jaxdiff imports {levels} DownEncoderBlock2D and "
                     f"{levels} UpDecoderBlock2D, one per block_out_channels")
  return AutoencoderKL(
      in_channels=c["in_channels"], out_channels=c["out_channels"],
      block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
      latent_channels=c["latent_channels"], norm_num_groups=c["norm_num_groups"],
      mid_block_add_attention=c["mid_block_add_attention"], use_quant_conv=c["use_quant_conv"],
      use_post_quant_conv=c["use_post_quant_conv"], scaling_factor=c["scaling_factor"],
      shift_factor=c["shift_factor"])


_AE_RES_BLOCK = {"norm1": ("norm1", "norm"), "conv1": ("conv1", "conv"),
                 "norm2": ("norm2", "norm"), "conv2": ("conv2", "conv"),
                 "conv_shortcut": ("conv_shortcut", "conv")}
# diffusers' names of the VAE attention before its Attention class (checkpoints saved then,
# as on the hub, keep them; diffusers renames them when loading).
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _autoencoder_modules(model: AutoencoderKL):
  """Flax module path -> (diffusers module prefix, layer kind): the same names, "/" and
  "_i" written "." and ".i"."""
  modules = {"quant_conv": ("quant_conv", "conv"), "post_quant_conv": ("post_quant_conv", "conv")}

  def add(prefix, table):
    torch_prefix = re.sub(r"_(\d+)", r".\1", prefix.replace("/", "."))  # resnets_0: resnets.0
    modules.update({f"{prefix}/{k}": (f"{torch_prefix}.{name}", kind)
                    for k, (name, kind) in table.items()})

  for part in ("encoder", "decoder"):
    add(part, {"conv_in": ("conv_in", "conv"), "conv_norm_out": ("conv_norm_out", "norm"),
               "conv_out": ("conv_out", "conv")})
    add(f"{part}/mid_block/resnets_0", _AE_RES_BLOCK)
    add(f"{part}/mid_block/attentions_0", _ATTN_BLOCK)
    add(f"{part}/mid_block/resnets_1", _AE_RES_BLOCK)
  for level in range(len(model.block_out_channels)):
    for i in range(model.layers_per_block + 1):  # The decoder's levels have one block more.
      add(f"encoder/down_blocks_{level}/resnets_{i}", _AE_RES_BLOCK)
      add(f"decoder/up_blocks_{level}/resnets_{i}", _AE_RES_BLOCK)
    add(f"encoder/down_blocks_{level}", {"downsamplers_0": ("downsamplers.0.conv", "conv")})
    add(f"decoder/up_blocks_{level}", {"upsamplers_0": ("upsamplers.0.conv", "conv")})
  return modules


def autoencoder_from_diffusers(config: dict, state: dict, num_train_timesteps: int = 1000):
  """(AutoencoderKL, params) from a diffusers AutoencoderKL config and state dict;
  num_train_timesteps is unused (the common signature of IMPORTERS)."""
  del num_train_timesteps
  model = _autoencoder_from_config(config)
  renamed = {}
  for key, value in state.items():
    prefix, _, leaf = key.rpartition(".")
    module, _, name = prefix.rpartition(".")
    if ".attentions." in module and name in _DEPRECATED_ATTENTION:
      key = f"{module}.{_DEPRECATED_ATTENTION[name]}.{leaf}"
    renamed[key] = value
  f = model.downsampling_factor
  image = jax.ShapeDtypeStruct((1, f, f, model.in_channels), jnp.float32)
  return model, _params_from_state(model, _autoencoder_modules(model), renamed, (image,))


IMPORTERS = {"UNet2DModel": unet_from_diffusers, "DiTTransformer2DModel": dit_from_diffusers,
             "AutoencoderKL": autoencoder_from_diffusers}


def load_diffusers(directory, num_train_timesteps: int = 1000):
  """(model, params) from a diffusers model folder: config.json + *.safetensors.

  Args:
    directory: the folder save_pretrained wrote (or a hub snapshot's model subfolder).
    num_train_timesteps: T of the DiscreteDDPM the network was trained with (unused for
      an AutoencoderKL).

  Returns:
    A `UNet` or `DiT` and its float32 params (use `jaxdiff.models.network_fn`), or an
    `AutoencoderKL` and its params (apply its encode / decode methods).
  """
  directory = pathlib.Path(directory)
  config = json.loads((directory / "config.json").read_text())
  name = config.get("_class_name")
  if name not in IMPORTERS:
    raise ValueError(f"cannot import diffusers class {name!r}; valid: {list(IMPORTERS)}")
  state = {}
  for path in _checkpoint_files(directory):
    state.update(load_file(path))
  return IMPORTERS[name](config, state, num_train_timesteps)


def _checkpoint_files(directory: pathlib.Path):
  """diffusers' float32 weights file, or its shards, or the folder's only safetensors file."""
  main = directory / "diffusion_pytorch_model.safetensors"
  if main.exists():
    return [main]
  shards = sorted(directory.glob("diffusion_pytorch_model-*-of-*.safetensors"))
  candidates = shards or sorted(directory.glob("*.safetensors"))
  if not candidates:
    raise ValueError(f"no .safetensors file in {directory} (pickled .bin checkpoints are "
                     "never loaded: convert them with safetensors first)")
  if not shards and len(candidates) > 1:
    raise ValueError(f"several weight files in {directory}, none of them "
                     f"diffusion_pytorch_model.safetensors: {[p.name for p in candidates]}")
  return candidates
