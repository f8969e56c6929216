"""A training run's configuration, read in one place and checked before anything runs.

`Settings.from_config` is the only code that reads a training config
(configs/train_base.py lists every field): it parses it once into frozen
dataclasses, one per section (RunSettings holding DataSettings, SampleSettings,
BpdSettings and EvalSettings; ModelSettings; optim.OptimizerConfig; EmaSettings), each
range-checking its own fields as it is made (`ranges`). `Experiment.build`
turns the settings and the data's `DataSpec` into the process, objective and
network; everything downstream receives these objects and numbers, never the
dict. train.py parses the config, makes the data source, then builds;
sample.py --checkpoint rebuilds the same model and objective with
`Experiment.from_config` from the config and DataSpec stored with a
checkpoint, without the data.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import models, schedules
from jaxdiff.train import optim, phema, ranges, state as train_state
from jaxdiff.train.step import (AutoencoderObjective, ConsistencyDistillation,
                                ConsistencyTraining, ConsistencyTuning, Objective,
                                ProgressiveDistillation, Reflow)

# Fields a restarted run may change: how long, how often and on what devices, not what is
# trained (a mesh or a gradient accumulation changes only the order of the sums).
RUN_FIELDS = ("num_steps", "checkpoint_every", "log_every", "sample_every", "keep_checkpoints",
              "samples", "mesh", "grad_accum", "bpd", "eval")
# What configs written before a field existed meant by its absence.
ABSENT = {"grad_accum": 1, "bpd": {"every": 0, "num": 128, "batch_size": 64, "num_probes": 1},
          "eval": {"every": 0, "num": 1000, "batch_size": 500, "sampler": "unipc", "nfe": 20,
                   "guidance": 1.0, "params": ("ema",), "classifier": "auto",
                   "inception_weights": ""},
          "autoencoder": {"checkpoint": "", "params": "ema"},
          "teacher": {"checkpoint": "", "params": "ema"}}
MIN_EVAL_SAMPLES = 20  # As jaxdiff.evaluation.MIN_IMAGES.
ABSENT_EMA = {"phema_sigma_rels": (), "snapshot_every": 0}  # In the section `ema`.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The model whose run trains an autoencoder (step.AutoencoderObjective, the config's loss
# holding its fields) rather than a denoiser.
AUTOENCODER = "autoencoder_kl"
# The denoisers' objectives by the config's loss.kind (the loss's other fields are the
# objective's); a loss without a kind is "diffusion".
OBJECTIVES = {"diffusion": Objective, "consistency_training": ConsistencyTraining,
              "consistency_distillation": ConsistencyDistillation,
              "consistency_tuning": ConsistencyTuning,
              "progressive_distillation": ProgressiveDistillation, "reflow": Reflow}
# The top-level numbers of RunSettings, and every top-level field of a training config.
RUN_NUMBERS = ("num_steps", "batch_size", "seed", "checkpoint_every", "log_every",
               "sample_every", "keep_checkpoints", "steps_per_call", "grad_accum")
TOP_LEVEL = (*RUN_NUMBERS, "mesh", "data", "samples", "bpd", "eval", "process", "process_options",
             "loss", "model", "optim", "ema", "autoencoder", "teacher")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the network must fit: a record's shape, the classes (0: none), 8-bit images, and
  for latents the autoencoder that made them (`latent.record`; None: data space)."""

  shape: tuple
  num_classes: int
  eight_bit: bool
  autoencoder: dict | None = None

  @classmethod
  def of(cls, source) -> "DataSpec":
    return cls(tuple(int(n) for n in source.shape), int(source.num_classes),
               bool(source.eight_bit), getattr(source, "autoencoder", None))

  @property
  def image_shape(self) -> tuple:
    """The shape of the images a model of these data makes: the autoencoder's images for
    latents (their samples are decoded), else the records' own shape."""
    if self.autoencoder is None:
      return self.shape
    return tuple(self.autoencoder["image_shape"])

  @property
  def makes_images(self) -> bool:
    """Whether a model of these data makes images (8-bit data, or latents decoded to
    images), not points."""
    return self.eight_bit or self.autoencoder is not None

  @classmethod
  def from_record(cls, spec: dict) -> "DataSpec":
    """The spec a checkpoint's run record stores (a record written before latents existed
    has no autoencoder)."""
    return cls(tuple(spec["shape"]), spec["num_classes"], spec["eight_bit"],
               spec.get("autoencoder"))


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The config's `data`: a source of jaxdiff.data.SOURCES, its options, left-right flips."""

  source: str
  options: dict
  random_flip: bool


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """The config's `samples`: the picture of EMA samples written every sample_every steps."""

  num: int  # 0: no pictures.
  sampler: str  # Of jaxdiff.samplers, at nfe evaluations (`generate.plan` checks both).
  nfe: int
  guidance: float  # Classifier-free guidance w of a conditional model.

  def __post_init__(self):
    ranges.integer("samples.num", self.num, 0, note="0: no pictures")
    ranges.integer("samples.nfe", self.nfe)
    ranges.number("samples.guidance", self.guidance, "(-inf, inf)")


@dataclasses.dataclass(frozen=True)
class BpdSettings:
  """The config's `bpd`: held-out bits/dim of the first EMA every `every` steps."""

  every: int  # 0: never.
  num: int
  batch_size: int
  num_probes: int

  def __post_init__(self):
    ranges.integer("bpd.every", self.every, 0, note="0: never")
    for field in ("num", "batch_size", "num_probes"):
      ranges.integer(f"bpd.{field}", getattr(self, field))


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """The config's `eval`: sample quality every `every` steps (jaxdiff.train.periodic_eval)."""

  every: int  # 0: never.
  num: int  # Samples per evaluation, of each params.
  batch_size: int  # Samples per compiled call over the whole mesh.
  sampler: str  # Of jaxdiff.samplers, at nfe evaluations (`generate.plan` checks both).
  nfe: int
  guidance: float  # Classifier-free guidance w of a conditional model.
  params: tuple  # Which parameters: "raw", "ema" (the first EMA) or "ema:<decay>".
  classifier: str  # Judge by the data's evaluation classifier: "auto", "yes" or "no".
  inception_weights: str  # Also judge by Inception-v3 (FID) with this file; "": not.

  def __post_init__(self):
    ranges.integer("eval.every", self.every, 0, note="0: never")
    # The features' covariance, KID and precision/recall need a few samples.
    ranges.integer("eval.num", self.num, MIN_EVAL_SAMPLES)
    ranges.integer("eval.batch_size", self.batch_size)
    ranges.integer("eval.nfe", self.nfe)
    ranges.number("eval.guidance", self.guidance, "(-inf, inf)")
    if (isinstance(self.params, str) or not self.params
        or not all(isinstance(p, str) for p in self.params)
        or len(set(self.params)) != len(self.params)):
      raise ValueError(f"eval.params must be a list of distinct names, each 'raw', 'ema' (the "
                       f"first EMA) or 'ema:<decay>', got {self.params!r}")
    if self.classifier not in ("auto", "yes", "no"):
      raise ValueError(f"eval.classifier must be 'auto', 'yes' or 'no', got {self.classifier!r}")
    if not isinstance(self.inception_weights, str):
      raise ValueError(f"eval.inception_weights must be a file name, or '' for none, got "
                       f"{self.inception_weights!r}")

  def ema_key(self, which: str, ema_decays: tuple) -> str | None:
    """The key in TrainState.ema of one of `params` (None: the raw parameters).

    Raises:
      ValueError naming eval.params and the names this run has.
    """
    names = [train_state.ema_name(decay) for decay in ema_decays]
    kind, _, name = which.partition(":")
    if which == "raw":
      return None
    if which == "ema":
      return names[0]
    if kind == "ema" and name:
      try:
        key = train_state.ema_name(float(name))
      except ValueError:
        key = None
      if key in names:
        return key
    raise ValueError(f"eval.params: {which!r} is not a parameter set of this run; it has "
                     f"'raw', 'ema' and {['ema:' + n for n in names]} (ema.decays)")


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """How long, how often, on what: the config's top-level numbers, mesh, data, samples, bpd."""

  num_steps: int
  batch_size: int
  seed: int  # Of every key of the run: jax.random.PRNGKey(seed), the data's shuffle.
  checkpoint_every: int
  log_every: int
  sample_every: int
  keep_checkpoints: int
  steps_per_call: int
  grad_accum: int
  mesh: dict
  data: DataSettings
  samples: SampleSettings
  bpd: BpdSettings
  eval: EvalSettings

  def __post_init__(self):
    for field in ("num_steps", "batch_size", "checkpoint_every", "log_every", "sample_every",
                  "keep_checkpoints", "steps_per_call", "grad_accum"):
      ranges.integer(field, getattr(self, field))
    ranges.integer("seed", self.seed, 0, 2**32)  # A PRNGKey's 32 bits.
    k = self.steps_per_call
    for field, value in (("checkpoint_every", self.checkpoint_every),
                         ("log_every", self.log_every), ("sample_every", self.sample_every),
                         ("num_steps", self.num_steps), ("bpd.every", self.bpd.every),
                         ("eval.every", self.eval.every)):
      if value % k:
        raise ValueError(f"{field} ({value}) must be a multiple of steps_per_call ({k}): the "
                         "state exists only between calls")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """The config's `model`: a network of jaxdiff.models.MODELS and how it is trained."""

  name: str
  options: dict  # Its options; the data's channels or dimension and classes are added.
  conditional: bool  # On the data's labels.
  label_dropout: float  # The null class's probability (classifier-free guidance).
  dtype: str  # Of the computation; parameters stay float32.

  def __post_init__(self):
    if self.name not in models.MODELS:
      raise ValueError(f"model.name must be one of {sorted(models.MODELS)}, got {self.name!r}")
    ranges.number("model.label_dropout", self.label_dropout, "[0, 1)")
    if self.dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class EmaSettings:
  """The config's `ema`: the decays of the parameters' moving averages (`optim.ema_decay`),
  and the power-function EMAs of post-hoc EMA (`phema`): their sigma_rels and the steps
  between their snapshots (0: none)."""

  decays: tuple
  warmup: bool
  phema_sigma_rels: tuple = ()
  snapshot_every: int = 0

  def __post_init__(self):
    if not self.decays or not all(isinstance(d, (int, float)) and 0 < d < 1
                                  for d in self.decays):
      raise ValueError(f"ema.decays must be one or more numbers in (0, 1), got {self.decays!r}")
    for sigma_rel in self.phema_sigma_rels:
      ranges.number("ema.phema_sigma_rels", sigma_rel, f"(0, {phema.MAX_SIGMA_REL:.6f})")
    if len(set(map(float, self.phema_sigma_rels))) != len(self.phema_sigma_rels):
      raise ValueError(f"ema.phema_sigma_rels must differ from each other, got "
                       f"{self.phema_sigma_rels!r}")
    ranges.integer("ema.snapshot_every", self.snapshot_every, 0, note="0: no snapshots")
    if self.snapshot_every and not self.phema_sigma_rels:
      raise ValueError(f"ema.snapshot_every ({self.snapshot_every}) saves the power-function "
                       "EMAs, but ema.phema_sigma_rels is empty: name their sigma_rels, e.g. "
                       "(0.05, 0.10), or set snapshot_every = 0")


@dataclasses.dataclass(frozen=True)
class NamedCheckpoint:
  """A config section naming another model by its checkpoint and which of its parameters
  ("ema", "ema:<decay>", "raw"; "" checkpoint: none).

  `autoencoder`: the one whose latents a latent model is trained on (`latent.load`: a
  jaxdiff checkpoint of an autoencoder's run, or a diffusers AutoencoderKL folder).
  `teacher`: the diffusion model a distillation learns from (`teacher.load`).
  """

  section: str
  checkpoint: str
  params: str

  def __post_init__(self):
    for field in ("checkpoint", "params"):
      if not isinstance(getattr(self, field), str):
        raise ValueError(f"{self.section}.{field} must be a string, got "
                         f"{getattr(self, field)!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
  """A training config parsed and range-checked once; everything downstream reads these."""

  config: dict  # The config as given, plain data: stored with every checkpoint.
  run: RunSettings
  process: str  # jaxdiff.schedules.make_process(process, **process_options).
  process_options: dict
  loss: dict  # The fields of step.Objective.
  model: ModelSettings
  optimizer: optim.OptimizerConfig
  ema: EmaSettings
  autoencoder: NamedCheckpoint
  teacher: NamedCheckpoint

  def __post_init__(self):
    k = self.run.steps_per_call
    if self.ema.snapshot_every % k:
      raise ValueError(f"ema.snapshot_every ({self.ema.snapshot_every}) must be a multiple of "
                       f"steps_per_call ({k}): the state exists only between calls")

  @classmethod
  def from_config(cls, config) -> "Settings":
    """The settings of a training config (a ConfigDict or plain dict), checked; a field a
    config written before it existed lacks takes its ABSENT value.

    Raises:
      ValueError naming the offending field, its value and what it accepts.
    """
    config = ml_collections.ConfigDict(config).to_dict()
    given = {**ABSENT, **config}
    unknown = sorted(set(given) - set(TOP_LEVEL))
    if unknown:
      raise ValueError(f"unknown config fields {unknown}; a training config has the fields "
                       f"{list(TOP_LEVEL)} (configs/train_base.py)")
    missing = [field for field in TOP_LEVEL if field not in given]
    if missing:
      raise ValueError(f"the config lacks the fields {missing} (configs/train_base.py)")
    run = RunSettings(**{field: given[field] for field in RUN_NUMBERS},
                      mesh=dict(given["mesh"]),
                      data=_section(DataSettings, "data", given["data"]),
                      samples=_section(SampleSettings, "samples", given["samples"]),
                      bpd=_section(BpdSettings, "bpd", given["bpd"]),
                      eval=_section(EvalSettings, "eval",
                                    {**given["eval"], "params": _tuple(given["eval"], "params")}))
    ema = _section(EmaSettings, "ema", {**given["ema"], "decays": _tuple(given["ema"], "decays"),
                                       "phema_sigma_rels": _tuple(given["ema"], "phema_sigma_rels")})
    for which in run.eval.params:
      run.eval.ema_key(which, ema.decays)
    return cls(config, run, given["process"], dict(given["process_options"]),
               dict(given["loss"]), _section(ModelSettings, "model", given["model"]),
               _section(optim.OptimizerConfig, "optim", given["optim"]), ema,
               _section(NamedCheckpoint, "autoencoder", given["autoencoder"],
                        section="autoencoder"),
               _section(NamedCheckpoint, "teacher", given["teacher"], section="teacher"))


def _tuple(section: dict, field: str):
  """section[field] as a tuple where it is a list or tuple (as read back from JSON)."""
  value = section.get(field, ())
  return tuple(value) if isinstance(value, (list, tuple)) else value


def _section(cls, name: str, values: dict, **given):
  """cls(**given, **values): the fields of the config's section `name`.

  Raises:
    ValueError naming an unknown or missing field.
  """
  fields = [f for f in dataclasses.fields(cls) if f.name not in given]
  unknown = sorted(set(values) - {f.name for f in fields})
  if unknown:
    raise ValueError(f"unknown {name} fields {unknown}; {name} has the fields "
                     f"{[f.name for f in fields]}")
  missing = [f.name for f in fields if f.name not in values
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if missing:
    raise ValueError(f"{name} lacks the fields {missing}")
  return cls(**given, **values)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The built parts of a training config (see configs/train_base.py for the fields)."""

  config: dict  # The whole config as plain data: stored with every checkpoint.
  run: RunSettings
  data: DataSpec
  process: schedules.Process
  objective: (Objective | ConsistencyTraining | ConsistencyDistillation | ConsistencyTuning
             | ProgressiveDistillation | AutoencoderObjective)
  model: object  # A Flax module of jaxdiff.models.
  conditional: bool
  optimizer: optim.OptimizerConfig
  ema_decays: tuple
  ema_warmup: bool
  phema_sigma_rels: tuple = ()  # The power-function EMAs in state.ema (`phema`).
  snapshot_every: int = 0  # Steps between their snapshots; 0: none.

  @classmethod
  def from_config(cls, config, data: DataSpec) -> "Experiment":
    """`build` of the config's Settings: a config as train.py reads it, or as a checkpoint
    stored it.

    Raises:
      ValueError naming the offending field and what it accepts.
    """
    return cls.build(Settings.from_config(config), data)

  @classmethod
  def build(cls, settings: Settings, data: DataSpec) -> "Experiment":
    """Builds the process, objective and network of the settings for data.

    Raises:
      ValueError naming the offending field and what it accepts.
    """
    process = schedules.make_process(settings.process, **settings.process_options)
    model = settings.model
    if model.name == AUTOENCODER:
      objective = _section(AutoencoderObjective, "loss", settings.loss)
      if model.conditional:
        raise ValueError("model.conditional: the autoencoder (model.name "
                         f"{AUTOENCODER!r}) takes no labels; set it False")
    else:
      loss = dict(settings.loss)
      kind = loss.pop("kind", "diffusion")
      if kind not in OBJECTIVES:
        raise ValueError(f"loss.kind must be one of {list(OBJECTIVES)}, got {kind!r}")
      objective = _section(OBJECTIVES[kind], "loss", loss, process=process)
    if model.conditional and not data.num_classes:
      raise ValueError("model.conditional needs a labelled data source; this one has no classes")
    options = {**model.options, **_data_options(model.name, data),
               "dtype": DTYPES[model.dtype]}
    if model.name != AUTOENCODER:
      options["num_classes"] = data.num_classes if model.conditional else None
    if model.conditional:
      options["class_dropout"] = model.label_dropout
    try:
      network = models.make_model(model.name, **options)
    except TypeError as error:  # An option given twice, e.g. DiT's patch_size beside its size.
      raise ValueError(f"model.options {model.options} do not fit model {model.name!r}: "
                       f"{error}") from None
    # DiT's default too (True, as its paper's checkpoints): the built network says.
    if getattr(network, "learn_sigma", False):
      raise ValueError("DiT's learn_sigma (its default) needs the hybrid loss L_vlb (Nichol & "
                       "Dhariwal 2021), which train.py does not implement: set "
                       "model.options.learn_sigma = False")
    return cls(settings.config, settings.run, data, process, objective, network,
               model.conditional, settings.optimizer,
               tuple(float(d) for d in settings.ema.decays), bool(settings.ema.warmup),
               tuple(float(s) for s in settings.ema.phema_sigma_rels),
               settings.ema.snapshot_every)

  def init_fn(self, optimizer):
    """() -> the TrainState at step 0, parameters drawn from the seed's first key."""
    key_init, key_train = jax.random.split(jax.random.PRNGKey(self.run.seed))
    x = jnp.zeros((1, *self.data.shape), jnp.float32)
    cond = jnp.zeros((1,), jnp.int32) if self.conditional else None

    def init():
      variables = self.objective.init(self.model, key_init, x, cond)
      return train_state.create(variables["params"], optimizer, self.ema_decays, key_train,
                                self.phema_sigma_rels,
                                target=bool(getattr(self.objective, "target_decay", 0.0)))

    return init

  @property
  def trains_autoencoder(self) -> bool:
    """Whether the run trains the autoencoder of latent diffusion, not a denoiser."""
    return isinstance(self.objective, AutoencoderObjective)

  def differences(self, saved_config: dict) -> list[str]:
    """The fields, other than RUN_FIELDS, where saved_config differs from this one."""
    return _differences(_filled(self.config, RUN_FIELDS), _filled(saved_config, RUN_FIELDS))


def _data_options(name: str, data: DataSpec) -> dict:
  """The model options that follow from the data: its channels, or its dimension."""
  if name == "mlp":
    if len(data.shape) != 1:
      raise ValueError(f"the mlp model takes points [D]; this data has shape {data.shape}: use "
                       "the unet or dit model")
    return {"dim": data.shape[0]}
  if len(data.shape) != 3:
    raise ValueError(f"the {name} model takes images [H, W, C]; this data has shape "
                     f"{data.shape}: use the mlp model")
  return {"in_channels" if name in ("dit", AUTOENCODER) else "channels": data.shape[-1]}


def _filled(config: dict, leave_out) -> dict:
  """The config without the fields leave_out, an absent field as ABSENT (and ABSENT_EMA in
  ema) says."""
  config = {k: v for k, v in {**ABSENT, **config}.items() if k not in leave_out}
  if isinstance(config.get("ema"), dict):
    config["ema"] = {**ABSENT_EMA, **config["ema"]}
  return config


def _differences(new, old, prefix="") -> list[str]:
  """Dotted paths where two nested dicts differ, with both values."""
  found = []
  for key in sorted(set(new) | set(old), key=str):
    a, b = new.get(key, "<absent>"), old.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      found += _differences(a, b, f"{prefix}{key}.")
    elif _plain(a) != _plain(b):
      found.append(f"{prefix}{key}: {b!r} in the checkpoint, {a!r} now")
  return found


def _plain(value):
  """Tuples as lists, as JSON stores them."""
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value
