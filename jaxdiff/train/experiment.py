"""A training run's configuration, read in one place and checked before anything runs.

`Experiment.from_config` is the only code that reads a training config
(configs/train_base.py lists every field); everything downstream receives the
objects and numbers it builds. train.py builds it with the data source's
`DataSpec`; sample.py --checkpoint rebuilds the same model and objective from
the config and DataSpec stored with a checkpoint, without the data.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import models, schedules
from jaxdiff.train import optim, state as train_state
from jaxdiff.train.step import Objective

# Fields a restarted run may change: how long, how often and on what devices, not what is
# trained (a mesh or a gradient accumulation changes only the order of the sums).
RUN_FIELDS = ("num_steps", "checkpoint_every", "log_every", "sample_every", "keep_checkpoints",
              "samples", "mesh", "grad_accum", "bpd")
# What configs written before a field existed meant by its absence.
ABSENT = {"grad_accum": 1, "bpd": {"every": 0, "num": 128, "batch_size": 64, "num_probes": 1}}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the network must fit: a record's shape, the classes (0: none), 8-bit images."""

  shape: tuple
  num_classes: int
  eight_bit: bool

  @classmethod
  def of(cls, source) -> "DataSpec":
    return cls(tuple(int(n) for n in source.shape), int(source.num_classes),
               bool(source.eight_bit))


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """How long, how often, on what: the config's top-level fields, data, mesh and samples."""

  num_steps: int
  batch_size: int
  seed: int
  checkpoint_every: int
  log_every: int
  sample_every: int
  keep_checkpoints: int
  steps_per_call: int
  grad_accum: int
  mesh: dict
  data_source: str
  data_options: dict
  random_flip: bool
  sample_num: int
  sample_sampler: str
  sample_nfe: int
  sample_guidance: float
  bpd_every: int  # 0: never.
  bpd_num: int
  bpd_batch_size: int
  bpd_num_probes: int


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The built parts of a training config (see configs/train_base.py for the fields)."""

  config: dict  # The whole config as plain data: stored with every checkpoint.
  run: RunSettings
  data: DataSpec
  process: schedules.Process
  objective: Objective
  model: object  # A Flax module of jaxdiff.models.
  conditional: bool
  optimizer: optim.OptimizerConfig
  ema_decays: tuple
  ema_warmup: bool

  @classmethod
  def from_config(cls, config, data: DataSpec) -> "Experiment":
    """Builds and checks everything the config names.

    Raises:
      ValueError naming the offending field and what it accepts.
    """
    config = ml_collections.ConfigDict(config).to_dict()
    run = run_settings(config)
    process = schedules.make_process(config["process"], **config["process_options"])
    objective = Objective(process, **config["loss"])
    model_config = dict(config["model"])
    conditional = bool(model_config.pop("conditional"))
    label_dropout = model_config.pop("label_dropout")
    if conditional and not data.num_classes:
      raise ValueError("model.conditional needs a labelled data source; this one has no classes")
    options = dict(model_config.pop("options"))
    dtype = model_config.pop("dtype")
    if dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {list(DTYPES)}, got {dtype!r}")
    name = model_config.pop("name")
    if model_config:
      raise ValueError(f"unknown model fields {sorted(model_config)}")
    options.update(_data_options(name, data), dtype=DTYPES[dtype],
                   num_classes=data.num_classes if conditional else None)
    if conditional:
      options["class_dropout"] = label_dropout
    if options.get("learn_sigma"):
      raise ValueError("DiT's learn_sigma needs the hybrid loss L_vlb (Nichol & Dhariwal 2021), "
                       "which train.py does not implement: set model.options.learn_sigma = False")
    model = models.make_model(name, **options)
    optimizer = optim.OptimizerConfig(**config["optim"])
    ema = config["ema"]
    decays = tuple(float(d) for d in ema["decays"])
    if not decays or not all(0 < d < 1 for d in decays):
      raise ValueError(f"ema.decays must be one or more numbers in (0, 1), got {ema['decays']!r}")
    return cls(config, run, data, process, objective, model, conditional, optimizer, decays,
               bool(ema["warmup"]))

  def init_fn(self, optimizer):
    """() -> the TrainState at step 0, parameters drawn from the seed's first key."""
    key_init, key_train = jax.random.split(jax.random.PRNGKey(self.run.seed))
    x = jnp.zeros((1, *self.data.shape), jnp.float32)
    cond = jnp.zeros((1,), jnp.int32) if self.conditional else None

    def init():
      variables = self.model.init(key_init, x, jnp.ones((1,)), cond, deterministic=True)
      return train_state.create(variables["params"], optimizer, self.ema_decays, key_train)

    return init

  def differences(self, saved_config: dict) -> list[str]:
    """The fields, other than RUN_FIELDS, where saved_config differs from this one."""
    return _differences(
        {k: v for k, v in self.config.items() if k not in RUN_FIELDS},
        {k: v for k, v in saved_config.items() if k not in RUN_FIELDS})


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
  return {"in_channels" if name == "dit" else "channels": data.shape[-1]}


def run_settings(config: dict) -> RunSettings:
  """The RunSettings of a config (plain dict), checked.

  Raises:
    ValueError naming the offending field.
  """
  config = {**ABSENT, **config}
  bpd = config["bpd"]
  fields = {**{field: config[field] for field in (
      "num_steps", "batch_size", "checkpoint_every", "log_every", "sample_every",
      "keep_checkpoints", "steps_per_call", "grad_accum")},
            **{f"bpd.{field}": bpd[field] for field in ("num", "batch_size", "num_probes")}}
  for field, value in fields.items():
    if not _count(value) or value < 1:
      raise ValueError(f"{field} must be a positive integer, got {value!r}")
  if not _count(bpd["every"]) or bpd["every"] < 0:
    raise ValueError(f"bpd.every must be an integer >= 0 (0: never), got {bpd['every']!r}")
  k = config["steps_per_call"]
  for field, value in (*((f, config[f]) for f in ("checkpoint_every", "log_every",
                                                   "sample_every", "num_steps")),
                       ("bpd.every", bpd["every"])):
    if value % k:
      raise ValueError(f"{field} ({value}) must be a multiple of steps_per_call ({k}): the "
                       "state exists only between calls")
  data, samples = config["data"], config["samples"]
  if not isinstance(samples["num"], int) or samples["num"] < 0:
    raise ValueError(f"samples.num must be an integer >= 0 (0: no pictures), got "
                     f"{samples['num']!r}")
  return RunSettings(
      num_steps=config["num_steps"], batch_size=config["batch_size"], seed=int(config["seed"]),
      checkpoint_every=config["checkpoint_every"], log_every=config["log_every"],
      sample_every=config["sample_every"], keep_checkpoints=config["keep_checkpoints"],
      steps_per_call=k, grad_accum=config["grad_accum"], mesh=dict(config["mesh"]), data_source=data["source"],
      data_options=dict(data["options"]), random_flip=bool(data["random_flip"]),
      sample_num=int(samples["num"]), sample_sampler=samples["sampler"],
      sample_nfe=int(samples["nfe"]), sample_guidance=float(samples["guidance"]),
      bpd_every=bpd["every"], bpd_num=bpd["num"], bpd_batch_size=bpd["batch_size"],
      bpd_num_probes=bpd["num_probes"])


def _count(value) -> bool:
  """Whether value is an integer (not a bool)."""
  return isinstance(value, int) and not isinstance(value, bool)


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
