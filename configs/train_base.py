"""Every default of training (train.py), in one ConfigDict: a cosine DDPM with L_simple.

Experiments beside this file override only what they change (digits.py, the
default of train.py, trains the same network as EDM). Fields:
  num_steps, batch_size (global), seed, checkpoint_every, log_every,
  sample_every, keep_checkpoints, steps_per_call (k optimizer steps per
  jitted call, a lax.scan; the cadences must be multiples of k), grad_accum
  (micro-batches per step, their gradients averaged: for a batch that does not
  fit);
  mesh: {"data": n, "fsdp": m} devices (one of them -1: all the other leaves);
    the batch is split over both, the state's large arrays over fsdp;
  data: a source of jaxdiff.data.SOURCES with its options, random_flip;
  process, process_options: jaxdiff.schedules.make_process;
  loss: the objective of jaxdiff.train.step: by loss.kind (absent: "diffusion"),
    the denoiser's Objective (prediction, target, weighting, reduce,
    preconditioning), or consistency training or distillation
    (jaxdiff.train.experiment.OBJECTIVES);
  model: a network of jaxdiff.models.MODELS with its options (channels,
    num_classes and class_dropout follow from data and the fields below),
    conditional (on the data's labels), label_dropout (the null class's
    probability, for classifier-free guidance), dtype (compute; params stay
    float32);
  optim: jaxdiff.train.optim.OptimizerConfig; ema: decays and their warm-up, and
    post-hoc EMA (Karras et al. 2024; jaxdiff.train.phema): phema_sigma_rels, the
    power-function EMAs tracked (() none), snapshot_every, the steps between their
    snapshots under <workdir>/phema/ (0: none; a multiple of steps_per_call);
  samples: the picture of EMA samples written every sample_every steps;
  bpd: held-out bits/dim every bpd.every steps (0: never);
  eval: sample quality every eval.every steps (0: never; jaxdiff.train.periodic_eval);
  autoencoder: for latent diffusion, the autoencoder whose latents data.source "latents"
    holds (jaxdiff.train.latent; "": none, the network sees the data);
  teacher: the trained diffusion model a distillation learns from
    (jaxdiff.train.teacher; "": none).
A restarted run may change num_steps, the cadences, the mesh, grad_accum, bpd
and eval, nothing else. jaxdiff.train.experiment.Settings parses these once, each
section into a frozen dataclass that checks its ranges (a seed in [0, 2**32),
label_dropout and Adam's b1, b2 in [0, 1), ...).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 1500
  config.batch_size = 128
  config.checkpoint_every = 500
  config.log_every = 50
  config.sample_every = 500
  config.keep_checkpoints = 3
  config.steps_per_call = 1
  config.grad_accum = 1
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})

  config.data = ml_collections.ConfigDict({
      "source": "digits", "options": {"split": "train"}, "random_flip": False})

  config.process = "ddpm"
  config.process_options = ml_collections.ConfigDict({"schedule": "cosine", "num_steps": 1000})
  config.loss = ml_collections.ConfigDict({
      "prediction": "eps", "target": "eps", "weighting": "none", "reduce": "mean",
      "preconditioning": "none"})

  # A 1,001,729-parameter U-Net for 8x8 images: widths 32, 64, attention at 4x4.
  config.model = ml_collections.ConfigDict({
      "name": "unet",
      "options": {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 2, "attn_resolutions": (4,),
                  "num_groups": 8, "dropout": 0.1},
      "conditional": False, "label_dropout": 0.1, "dtype": "float32"})

  config.optim = ml_collections.ConfigDict({
      "learning_rate": 1e-3, "warmup_steps": 100, "schedule": "cosine",
      "end_learning_rate": 1e-5, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
      "decay_norms_and_biases": False, "grad_clip": 1.0})
  config.ema = ml_collections.ConfigDict({"decays": (0.9999,), "warmup": True,
                                          "phema_sigma_rels": (), "snapshot_every": 0})

  # EMA samples every sample_every steps: fixed noise, fixed labels (0, 1, 2, ...); num 0
  # for none.
  config.samples = ml_collections.ConfigDict({
      "num": 64, "sampler": "unipc", "nfe": 20, "guidance": 1.0})
  # Held-out bits/dim of the first EMA every bpd.every steps (0: never), on the first bpd.num
  # records of the data's test split (or new draws): jaxdiff.train.bits_per_dim.
  config.bpd = ml_collections.ConfigDict({"every": 0, "num": 128, "batch_size": 64,
                                          "num_probes": 1})
  # Sample quality every eval.every steps (0: never) and at the end: eval.num samples (from
  # the same x_T at every evaluation) of each of eval.params ("raw", "ema" the first EMA,
  # "ema:<decay>") judged by the data's evaluation classifier (eval.classifier: auto, yes or
  # no, as jaxdiff.evaluation.wanted) and, where eval.inception_weights names a weights
  # file, by Inception-v3 (FID): jaxdiff.train.periodic_eval.
  config.eval = ml_collections.ConfigDict({
      "every": 0, "num": 1000, "batch_size": 500, "sampler": "unipc", "nfe": 20,
      "guidance": 1.0, "params": ("ema",), "classifier": "auto", "inception_weights": ""})
  config.autoencoder = ml_collections.ConfigDict({"checkpoint": "", "params": "ema"})
  config.teacher = ml_collections.ConfigDict({"checkpoint": "", "params": "ema"})
  return config


def use_edm(config):
  """Karras et al. 2022 (EDM) on any config: its process (ln sigma ~ N(-1.2, 1.2^2)), the
  network preconditioned to an x0 prediction (their table 1) and its loss weight."""
  config.process = "edm"
  config.process_options = {}
  config.loss.prediction = "x0"
  config.loss.target = "x0"
  config.loss.weighting = "edm"
  config.loss.preconditioning = "edm"
  return config
