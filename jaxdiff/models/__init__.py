"""Networks: the DDPM U-Net (`unet`), the Diffusion Transformer (`dit`), shared layers.

`denoise_fn(model, params)` turns either into the (x, t, cond) -> prediction
function that samplers and losses take; `compiler_options()` are the XLA
options to jit them with (`compiler`).
"""

from jaxdiff.models.compiler import compiler_options
from jaxdiff.models.dit import DIT_SIZES, DiT, dit
from jaxdiff.models.layers import num_params
from jaxdiff.models.unet import UNet


def denoise_fn(model, params):
  """(x [B, H, W, C], t [B], cond) -> prediction [B, H, W, C], dropout off.

  A DiT with learn_sigma outputs 2C channels (Peebles & Xie 2023, sec. 3.1:
  the prediction, then the variance interpolation); the samplers take the
  first C, the prediction.
  """

  def fn(x, t, cond=None):
    out = model.apply({"params": params}, x, t, cond, deterministic=True)
    return out[..., :x.shape[-1]] if getattr(model, "learn_sigma", False) else out

  return fn


__all__ = ["DIT_SIZES", "DiT", "UNet", "compiler_options", "denoise_fn", "dit", "num_params"]
