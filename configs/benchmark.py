"""Every default of the NFE benchmark (bench.py), in one ConfigDict.

Samplers are named as in jaxdiff.samplers.SAMPLERS, grids as in
jaxdiff.grids.GRIDS and peers as in jaxdiff.peers.SCHEDULERS; options are dicts.
bench.py checks every name, option and NFE before it runs anything, and exits
listing every mistake.
"""

import ml_collections


def sampler(name, grid, options=None, grid_options=None):
  """A jaxdiff sampler run: registry name, its options, grid name and grid options."""
  return ml_collections.ConfigDict({"name": name, "options": options or {}, "grid": grid,
                                    "grid_options": grid_options or {}})


def peer(name, **options):
  """A diffusers scheduler (class name) and the keywords it is built with."""
  return ml_collections.ConfigDict({"name": name, "options": options})


def spacings(name, **options):
  """The scheduler with each of diffusers' three timestep spacings (one is its default)."""
  return tuple(peer(name, timestep_spacing=s, **options)
               for s in ("linspace", "leading", "trailing"))


# diffusers schedulers with their defaults under each timestep spacing (Lin et
# al. 2024, table 2), then with the options their documentation recommends
# (these keep the scheduler's default spacing). DPMSolverSinglestep has no
# timestep_spacing option (it spaces like "linspace").
PEERS = (
    *spacings("DDIMScheduler"),  # Default "leading", steps_offset 0, set_alpha_to_one.
    peer("DDIMScheduler", steps_offset=1, set_alpha_to_one=False),  # Stable Diffusion's config.
    *spacings("DPMSolverMultistepScheduler"),  # dpmsolver++, order 2, lower_order_final.
    peer("DPMSolverMultistepScheduler", solver_order=3),
    peer("DPMSolverMultistepScheduler", use_karras_sigmas=True),
    peer("DPMSolverMultistepScheduler", use_lu_lambdas=True),
    peer("DPMSolverMultistepScheduler", final_sigmas_type="sigma_min"),
    peer("DPMSolverMultistepScheduler", lower_order_final=False),
    peer("DPMSolverSinglestepScheduler"),  # dpmsolver++, order 2.
    peer("DPMSolverSinglestepScheduler", solver_order=3),
    *spacings("UniPCMultistepScheduler"),  # bh2, order 2.
    peer("UniPCMultistepScheduler", solver_order=3),
    peer("UniPCMultistepScheduler", solver_type="bh1"),  # NaN at the final sigma = 0.
    peer("UniPCMultistepScheduler", solver_type="bh1", final_sigmas_type="sigma_min"),
    peer("UniPCMultistepScheduler", solver_type="bh1", solver_order=3,
         final_sigmas_type="sigma_min"),
    *spacings("EulerDiscreteScheduler"),
    peer("EulerDiscreteScheduler", use_karras_sigmas=True),
    *spacings("HeunDiscreteScheduler"),  # 2N - 1 model calls: odd NFE only.
    peer("HeunDiscreteScheduler", use_karras_sigmas=True),
    *spacings("DEISMultistepScheduler"),  # order 2; ends at sigma_min.
    peer("DEISMultistepScheduler", solver_order=3),
    *spacings("PNDMScheduler"),  # Runge-Kutta warm-up (PRK, N + 9 calls), then PLMS.
    peer("PNDMScheduler", skip_prk_steps=True),  # PLMS only, as Stable Diffusion uses it.
)


# The higher-order solvers on log-SNR-uniform grids (Lu et al. 2022), ending
# where the noise-to-signal ratio sigma/alpha is 0.01 (t = 1/T, the process's
# t_min), 0.03 or 0.1 before the final jump to t = 0. The t_min values are for
# the linear 1000-step DDPM (sigma/alpha = 0.03 at t = 0.006, 0.1 at 0.0274);
# the set was fixed on other mixtures (a 6-mode ring, a 64-D mixture of
# another seed) before the benchmark's own problems were run.
HIGH_ORDER = tuple(
    sampler(name, "log_snr", options, grid_options)
    for name, options in (("ipndm", {}), ("unipc", {"order": 2}), ("unipc", {"order": 3}),
                          ("dpm_solver", {"order": 2}), ("dpm_solver", {"order": 3}))
    for grid_options in ({}, {"t_min": 0.006}, {"t_min": 0.0274}))


# The official solvers' recommended configurations on their own convention
# (LuChengTHU/dpm-solver and wl-zhao/UniPC, `get_time_steps`): N network calls on
# N + 1 points from t = 1 to t_min = 1/T, no final jump (grids' end="t_min"). The
# same set as benchmarks/reference_solvers.py runs officially: UniPC bh2 (its
# default) and bh1, order 2 and 3, on time-quadratic and log-SNR grids;
# DPM-Solver++ 2M and 3M (3M with the reference weight, the default) on
# log-SNR, time-uniform and time-quadratic grids. (The official DPM-Solver-3
# singlestep mixes orders to spend any NFE; jaxdiff's singlestep order 3 spends
# multiples of 3 only, so it is not here.)
REFERENCE_CONVENTION = (
    *(sampler("unipc", grid, {"order": order, "variant": variant}, {"end": "t_min"})
      for variant in ("bh2", "bh1") for order in (2, 3) for grid in ("quadratic", "log_snr")),
    *(sampler("dpm_solver", grid, {"order": order}, {"end": "t_min"})
      for order in (2, 3) for grid in ("log_snr", "uniform", "quadratic")),
)


# DPM-Solver++ 3M with the Taylor-exact weight of the second difference
# (weight_3m="taylor"); the rows of dpm_solver order=3 above have the official
# code's half weight, the default ("reference").
TAYLOR_3M = tuple(
    sampler("dpm_solver", "log_snr", {"order": 3, "weight_3m": "taylor"}, grid_options)
    for grid_options in ({}, {"t_min": 0.006}, {"end": "t_min"}))


# Grids learned for two of them at each NFE (grids.learned, LD3): started from
# their log-SNR grid, fitted on 4096 starts drawn apart from the benchmark's x_T.
LEARNED = (
    sampler("ipndm", "learned", grid_options={"init": "log_snr",
                                              "init_options": {"t_min": 0.0274}}),
    sampler("unipc", "learned", {"order": 3}, {"init": "log_snr",
                                               "init_options": {"t_min": 0.006}}),
)


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # x_T, the samplers' noise and the metrics' fresh data.
  config.num_samples = 1000

  # The forward process: jaxdiff.schedules.make_process(process, **process_options).
  config.process = "ddpm"
  config.process_options = ml_collections.ConfigDict({"schedule": "linear", "num_steps": 1000})
  config.prediction = "eps"  # jaxdiff.parameterization.PREDICTIONS

  # Oracles (jaxdiff.benchmark.problems.ORACLES), one table each; --oracle FILE.npz replaces them.
  config.oracles = (
      ml_collections.ConfigDict({"name": "ring", "options": {"num_modes": 8, "radius": 0.7,
                                                             "std": 0.08, "dim": 2}}),
      ml_collections.ConfigDict({"name": "random", "options": {
          "dim": 64, "num_modes": 10, "scale": 1.0, "std_range": (0.1, 0.3), "seed": 0}}),
  )

  config.nfes = (5, 10, 15, 20, 50)
  config.samplers = (
      sampler("ddim", "trailing"),
      sampler("ddim", "uniform"),
      sampler("ddim", "log_snr"),
      sampler("ddim", "karras", grid_options={"rho": 7.0}),
      sampler("ddpm", "trailing"),  # Stochastic: reported, marked.
      *HIGH_ORDER,
      *REFERENCE_CONVENTION,
      *TAYLOR_3M,
      *LEARNED,
  )
  # diffusers peers, run with --peers (DiscreteDDPM processes only).
  config.peers = PEERS

  # The reference PF-ODE solution (jaxdiff.benchmark.problems.reference_solution, Tsit5).
  config.reference = ml_collections.ConfigDict({"rtol": 1e-6, "atol": 1e-6})
  return config
