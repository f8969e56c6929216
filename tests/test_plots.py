"""The inspection pictures: schedules, noising, a guidance sweep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff import plots, schedules


def test_plot_schedules_and_noising(tmp_path):
  processes = {"ddpm cosine": schedules.discrete_ddpm("cosine"), "edm": schedules.EDM()}
  plots.plot_schedules(processes, tmp_path / "schedules.png")
  assert Image.open(tmp_path / "schedules.png").size[0] > 400

  images = jnp.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8, 1)
  plots.plot_noising(schedules.VE(), images, jax.random.PRNGKey(0), tmp_path / "noising.png")
  picture = np.asarray(Image.open(tmp_path / "noising.png").convert("L"), np.float32)
  assert picture.std() > 10  # Not blank.
  with pytest.raises(ValueError, match=r"images \[B, H, W, C\]"):
    plots.plot_noising(schedules.VE(), jnp.zeros((3, 8, 8)), jax.random.PRNGKey(0),
                       tmp_path / "bad.png")


def test_plot_guidance_sweep(tmp_path):
  # Rows brighten with w: the picture's rows must differ, the layout S x B.
  scales = [1.0, 3.0, 5.0]
  samples = jnp.stack([jnp.full((4, 8, 8, 3), -1.0 + 0.6 * i) for i in range(3)])
  plots.plot_guidance_sweep(samples, scales, tmp_path / "sweep.png")
  picture = np.asarray(Image.open(tmp_path / "sweep.png").convert("L"), np.float32)
  thirds = np.array_split(picture, 3, axis=0)
  means = [third.mean() for third in thirds]
  assert means[0] < means[1] < means[2]
  with pytest.raises(ValueError, match=r"\[S, B, H, W, C\].*S = len\(scales\) = 2"):
    plots.plot_guidance_sweep(samples, scales[:2], tmp_path / "bad.png")
