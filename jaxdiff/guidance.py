"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), as a denoise_fn wrapper.

A network trained with condition dropout (`jaxdiff.models.layers.LabelEmbedding`)
is both conditional, D(x, t, c), and unconditional, D(x, t, null). Guidance
with scale w samples from the output
  D_w = D(x, t, null) + w (D(x, t, c) - D(x, t, null)),
so w = 0 is the unconditional model, w = 1 the conditional one and w > 1
sharpens towards the condition (Ho & Salimans write (1 + w') eps_c - w' eps,
i.e. w = 1 + w').

D is the network's own prediction (eps, x0, v, score or velocity): guidance is
applied in that space. Each of them is, at fixed (x_t, t), an affine map of
any other (`jaxdiff.parameterization`), and D_w is an affine combination with
weights (1 - w, w) summing to one, so guiding in one space and converting
equals converting and then guiding: the result does not depend on the
prediction type.

`guidance_sweep` runs a sampler at several w from the same x_T and key.

Both branches are one forward pass on the batch [x, x] with conditions
[c, null]. A sampler counts that pass once: `info["nfe"]` of a guided run is
the number of batched calls, each twice the batch size of an unguided call.
"""

import jax
import jax.numpy as jnp

from jaxdiff.sde import per_example


def guided_denoise_fn(denoise_fn, guidance_scale, null_cond):
  """Wraps a conditional denoise_fn into its classifier-free-guided version.

  Args:
    denoise_fn: (x [B, ...], t [B], cond [B, ...]) -> prediction [B, ...],
      trained with condition dropout.
    guidance_scale: w, a scalar or per-example [B] (may be traced).
    null_cond: the condition meaning "none", broadcast to cond's shape (for
      the class-conditional networks of `jaxdiff.models`: num_classes).

  Returns:
    (x [B, ...], t [B], cond [B, ...]) -> guided prediction [B, ...], making
    exactly one call of denoise_fn, on a batch of 2B.
  """

  def fn(x, t, cond=None):
    if cond is None:
      raise ValueError("classifier-free guidance needs a condition; got cond=None")
    B = x.shape[0]
    cond = jnp.asarray(cond)
    null = jnp.broadcast_to(jnp.asarray(null_cond, cond.dtype), cond.shape)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
    both = denoise_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                      jnp.concatenate([cond, null]))  # [2B, ...]: conditional, then null
    d_cond, d_null = both[:B], both[B:]
    return d_null + per_example(guidance_scale, x) * (d_cond - d_null)

  return fn


def guidance_sweep(sampler, denoise_fn, process, x_T, key, grid, *, cond, scales, null_cond,
                   **options):
  """The same start and noise sampled at each guidance scale, one scale after another.

  Args:
    sampler: a sampler function (e.g. `jaxdiff.samplers.ddim`).
    denoise_fn, null_cond: as for `guided_denoise_fn`.
    process, x_T [B, ...], key, grid: as for the sampler; shared by every scale.
    cond: [B, ...] conditions.
    scales: [S] guidance scales w.
    **options: further sampler options (prediction, eta, ...).

  Returns:
    samples [S, B, ...] (row s at scales[s]) and the samplers' info, each entry [S].
  """

  def run(w):
    return sampler(guided_denoise_fn(denoise_fn, w, null_cond), process, x_T, key, grid,
                   cond=cond, **options)

  return jax.lax.map(run, jnp.asarray(scales, jnp.float32))  # One compile, S runs in sequence.
