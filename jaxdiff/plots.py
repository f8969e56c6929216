"""Pictures for inspecting processes and samples (matplotlib, written to PNG).

  plot_schedules   alpha_bar(t) = alpha(t)^2 and log-SNR lam(t) against t / t_max
                   (Nichol & Dhariwal 2021, fig. 5 draws the first panel).
  plot_noising     a batch of images noised to x_t at several fractions of t_max.
  plot_samples_2d  2-D samples over the contours of a true density.
  plot_guidance_sweep  samples at several classifier-free guidance scales
                   (Ho & Salimans 2022, fig. 1 shows such a sweep).
  save_image_grid  images tiled into one PNG, pixel for pixel (small images
                   enlarged by an integer factor).
  plot_lines       a quantity against a swept setting, a line per configuration and
                   horizontal reference lines (the evaluation sweep's quality plots).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxdiff import sde
from jaxdiff.schedules import Process


@functools.cache
def _pyplot():
  """matplotlib.pyplot on its file-only backend (Agg: no display is assumed), imported at
  the first plot rather than with jaxdiff (half a second that save_image_grid, PIL only,
  does not need)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot  # pylint: disable=import-outside-toplevel
  return matplotlib.pyplot


def plot_schedules(processes: dict[str, Process], path, num_points: int = 500):
  """Plots alpha_bar and log-SNR of each named process against t / t_max; writes `path`."""
  plt = _pyplot()
  fig, (ax_bar, ax_lam) = plt.subplots(1, 2, figsize=(11, 4))
  u = np.linspace(0.0, 1.0, num_points)
  for name, process in processes.items():
    t = jnp.asarray(u * process.t_max, jnp.float32)
    ax_bar.plot(u, process.alpha(t) ** 2, label=name)
    ax_lam.plot(u, process.log_snr(t), label=name)
  ax_bar.set(xlabel="t / t_max", ylabel="alpha_bar = alpha(t)^2", title="signal")
  ax_lam.set(xlabel="t / t_max", ylabel="log SNR = log(alpha^2 / sigma^2)", title="log-SNR")
  ax_lam.set_ylim(-20, 20)
  for ax in (ax_bar, ax_lam):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_noising(process: Process, x0, key, path, fractions=(0.0, 0.25, 0.5, 0.75, 1.0)):
  """Grid of x_t: a row per image of x0 [B, H, W, C] (values in [-1, 1]), a column per t.

  Each x_t is divided by sqrt(alpha^2 + sigma^2), its std for unit-variance
  data, so that processes whose noise explodes (VE, EDM) stay visible.
  """
  plt = _pyplot()
  x0 = jnp.asarray(x0, jnp.float32)
  if x0.ndim != 4 or x0.shape[-1] not in (1, 3):
    raise ValueError(f"x0 must be images [B, H, W, C] with C in (1, 3), got {x0.shape}")
  rows, cols = x0.shape[0], len(fractions)
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
  for j, fraction in enumerate(fractions):
    t = fraction * process.t_max
    eps = jax.random.normal(jax.random.fold_in(key, j), x0.shape)
    x_t = sde.q_sample(process, x0, t, eps) / jnp.sqrt(process.alpha(t) ** 2 + process.sigma2(t))
    images = np.clip((np.asarray(x_t) + 1) / 2, 0, 1)
    for i in range(rows):
      axes[i, j].imshow(images[i].squeeze(-1) if images.shape[-1] == 1 else images[i],
                        cmap="gray", vmin=0, vmax=1)
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[0, j].set_title(f"t = {t:.3g}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_samples_2d(samples: dict[str, np.ndarray], path, log_density=None, extent=1.5):
  """Scatter plots of named [N, 2] sample sets, one panel each, over log_density contours.

  Args:
    samples: name -> [N, 2] points.
    path: PNG file to write.
    log_density: optional ([M, 2] -> [M]) true log-density to draw as contours.
    extent: the panels show [-extent, extent]^2.
  """
  plt = _pyplot()
  names = list(samples)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  if log_density is not None:
    grid = np.linspace(-extent, extent, 200)
    xx, yy = np.meshgrid(grid, grid)
    density = np.exp(np.asarray(log_density(jnp.stack([xx.ravel(), yy.ravel()], -1))))
  for ax, name in zip(axes.ravel(), names):
    points = np.asarray(samples[name])
    ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.4, color="tab:blue")
    if log_density is not None:
      levels = density.max() * np.array([0.02, 0.2, 0.6])
      ax.contour(xx, yy, density.reshape(xx.shape), levels=levels, colors="tab:red",
                 linewidths=0.6)
    ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal")
    ax.set_title(name, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_guidance_sweep(samples, scales, path):
  """One grid image of a guidance sweep: a row per scale w, a column per example.

  Args:
    samples: [S, B, H, W, C] images in [-1, 1], e.g. from `guidance.guidance_sweep`.
    scales: [S] guidance scales, written at the start of each row.
    path: PNG file to write.
  """
  plt = _pyplot()
  samples = np.asarray(samples, np.float32)
  if samples.ndim != 5 or samples.shape[-1] not in (1, 3) or samples.shape[0] != len(scales):
    raise ValueError(f"samples must be [S, B, H, W, C] with C in (1, 3) and S = len(scales) = "
                     f"{len(scales)}, got {samples.shape}")
  rows, cols = samples.shape[:2]
  images = np.clip((samples + 1) / 2, 0, 1)
  fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows), squeeze=False)
  for i, w in enumerate(scales):
    for j in range(cols):
      image = images[i, j]
      axes[i, j].imshow(image.squeeze(-1) if image.shape[-1] == 1 else image,
                        cmap="gray", vmin=0, vmax=1)
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(f"w = {float(w):g}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save_image_grid(images, path, *, cols: int | None = None, min_size: int = 32, pad: int = 1):
  """Tiles images [N, H, W, C] (C 1 or 3) in [-1, 1] into one PNG, row by row.

  Each image is enlarged by the smallest integer factor that makes it at least
  min_size pixels high (nearest neighbour, so pixels stay visible); tiles are
  separated by `pad` white pixels. cols defaults to ceil(sqrt(N)).
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, C] with C in (1, 3), got {images.shape}")
  n, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = -(-n // cols)
  factor = max(1, -(-min_size // h))
  pixels = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
  pixels = pixels.repeat(factor, axis=1).repeat(factor, axis=2)
  th, tw = h * factor + pad, w * factor + pad
  canvas = np.full((rows * th + pad, cols * tw + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    canvas[pad + r * th:pad + r * th + h * factor, pad + q * tw:pad + q * tw + w * factor] = pixels[i]
  PIL.Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas).save(path)


def plot_lines(lines: dict, path, *, xlabel: str, ylabel: str, references=None,
               log_x: bool = False, title: str = ""):
  """A line per label of `lines` {label: ([x], [y])} with markers; `references`
  {label: y} as dashed horizontal lines; the x ticks at the values plotted. Writes `path`."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, (xs, ys) in lines.items():
    ax.plot(xs, ys, marker="o", markersize=4, label=label)
  for i, (label, y) in enumerate((references or {}).items()):
    ax.axhline(y, linestyle="--", linewidth=1, color=f"C{(len(lines) + i) % 10}", label=label)
  if log_x:
    ax.set_xscale("log")
  ticks = sorted({x for xs, _ in lines.values() for x in xs})
  ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
  ax.minorticks_off()
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
