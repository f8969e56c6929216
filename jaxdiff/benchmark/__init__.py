"""NFE benchmark: samplers x time grids x numbers of network evaluations on the oracle.

Every sampler runs with the exact denoiser of a Gaussian mixture (`jaxdiff.oracle`),
so its error is the discretization error alone. Each run is scored by
  rmse  sqrt(mean_b ||x_b - x_ref,b||^2 / D) against the probability-flow ODE
        solved from the same x_T to t = 0 (`problems.reference_solution`); for
        stochastic samplers (as their registry entry declares; a diffusers
        peer, by re-running it with another key) it is reported but marked,
        since they do not follow the ODE;
  sw2   sliced Wasserstein-2 to fresh data (`metrics.sliced_wasserstein`);
  nll   mean -log p_0(x) under the true density (nats).

One module per concern, in the order bench.py uses them:
  problems  what is solved: the oracle mixtures (named, or from an .npz file),
            x_T (seeded, or from an .npy file), the `Problem` every run of a
            table shares, and the reference PF-ODE solution;
  runs      how: a configuration (`Entry`: sampler, options, grid) checked
            before anything runs, run at each NFE into one row of measurements;
  report    what is written: the rmse tables, CSV, JSON and the rmse-vs-NFE plot.
diffusers' schedulers enter as further entries (`jaxdiff.peers`).
"""
