"""Networks: the DDPM U-Net (`unet`), the Diffusion Transformer (`dit`), a residual
MLP for points (`mlp`), shared layers, and latent diffusion's KL autoencoder
(`autoencoder`; not a denoiser: `network_fn` does not apply to it).

`make_model(name, **options)` builds one by its name in MODELS;
`network_fn(model, params)` turns any into the (x, t, cond) -> prediction
function that the train step, samplers and losses take (the one place that
calls a network: its dropout, DiT's learned-sigma channels);
`compiler_options()` are the XLA options to jit them with (`compiler`).
"""

import inspect

from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.compiler import compiler_options
from jaxdiff.models.dit import DIT_SIZES, DiT, dit
from jaxdiff.models.layers import num_params
from jaxdiff.models.mlp import MLP
from jaxdiff.models.unet import UNet

# name -> constructor; "dit" takes its size ("S/2" ... "XL/8") first.
MODELS = {"unet": UNet, "dit": dit, "mlp": MLP, "autoencoder_kl": AutoencoderKL}


def make_model(name: str, **options):
  """The network `name` of MODELS with its options, e.g. make_model("unet", ch=32).

  Raises:
    ValueError naming the valid names or options.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
  module = DiT if name == "dit" else MODELS[name]
  valid = (["size"] if name == "dit" else []) + [
      field for field in inspect.signature(module).parameters if field not in ("parent", "name")]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"model {name!r} takes the options {valid}, got unknown {unknown}")
  return MODELS[name](**options)


def network_fn(model, params, dropout_key=None):
  """(x [B, ..., C], t [B], cond) -> prediction [B, ..., C]; dropout (and label dropout)
  on when given a key, off otherwise.

  A DiT with learn_sigma outputs 2C channels (Peebles & Xie 2023, sec. 3.1:
  the prediction, then the variance interpolation); only the first C, the
  prediction, leave here: the losses and samplers know no variance output.
  """

  def fn(x, t, cond=None):
    if dropout_key is None:
      out = model.apply({"params": params}, x, t, cond, deterministic=True)
    else:
      out = model.apply({"params": params}, x, t, cond, deterministic=False,
                        rngs={"dropout": dropout_key})
    return out[..., :x.shape[-1]] if getattr(model, "learn_sigma", False) else out

  return fn


__all__ = ["AutoencoderKL", "DIT_SIZES", "DiT", "MLP", "MODELS", "UNet", "compiler_options", "dit",
           "make_model", "network_fn", "num_params"]
