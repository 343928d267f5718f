"""Typed configuration: dataclasses per section, YAML loading, ``--set`` overrides.

``load_config(path, overrides)`` reads a YAML file with the sections ``data``, ``model``,
``train`` and ``sample`` (every key optional; defaults below), applies overrides of the
form ``"section.key=value"`` (the value is parsed as YAML: ``32``, ``1e-3``, ``null``,
``pixelcnn``), and validates every key. Mistakes raise :class:`ConfigError` naming the
key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import yaml

from pixelcnn_tf.errors import ConfigError

DATASETS = ("cifar10", "mnist", "fashion_mnist", "mnist5k", "npz")


MAX_YAML_NODES = 10_000  # a config has ~50; alias bombs expand to millions
MAX_SHOWN = 80  # characters of a value quoted in an error message


def _show(value: Any) -> str:
    """``repr(value)``, cut to MAX_SHOWN characters for error messages."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def safe_load_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses documents whose aliases expand to more than
    MAX_YAML_NODES nodes (a "billion laughs" alias bomb of a few hundred bytes would take
    gigabytes once anything walks or prints it)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: Dict[int, int] = {}

        def expanded(n) -> int:  # node count with every alias expanded; memoised
            if id(n) not in sizes:
                sizes[id(n)] = 0  # (a recursive alias counts as one node)
                children = n.value if isinstance(n.value, list) else []
                total = 1
                for child in children:
                    parts = child if isinstance(child, tuple) else (child,)  # map pairs
                    total += sum(expanded(p) for p in parts)
                    if total > MAX_YAML_NODES:
                        break
                sizes[id(n)] = total
            return sizes[id(n)]

        if expanded(node) > MAX_YAML_NODES:
            raise ConfigError(f"{what} expands to more than {MAX_YAML_NODES:,} YAML nodes "
                              f"(aliases that repeat aliases); write the values out instead")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _choices(values):
    return {"choices": values}


def _model_types():
    from pixelcnn_tf.models import model_types  # the type table (no TensorFlow import)
    return model_types()


SAMPLE_METHODS = ("naive", "fast")  # sampling.generate_images(method=...)
MAX_SAMPLES = 4096  # images drawn in one batch: sample.n_images, evaluate.py --samples, SavedModel
MAX_CLASSES = 65536  # model.num_classes: its class vectors are stored per layer


def _sample_methods():
    return SAMPLE_METHODS


@dataclass
class DataConfig:
    dataset: str = field(default="mnist5k", metadata=_choices(DATASETS))
    path: Optional[str] = None  # the .npz file for dataset: npz
    data_dir: Optional[str] = None  # TFDS data directory (None: TFDS's default)
    batch_size: int = field(default=16, metadata={"min": 1})
    eval_batch_size: int = field(default=64, metadata={"min": 1})
    validation_size: int = field(default=500, metadata={"min": 1})  # held out from train
    shuffle_buffer: int = field(default=10000, metadata={"min": 1})
    # Decoded training images are cached in memory when they take at most this many MiB
    # (CIFAR-10: 132 MiB); larger datasets are re-read and decoded every epoch. 0: never.
    cache_mb: int = field(default=4096, metadata={"min": 0})
    # Bit depth the model sees: 8-bit images are quantized to 2^bits levels when loaded
    # (the 8 - bits low bits dropped; data.quantize). 1 = binary images.
    bits: int = field(default=8, metadata={"min": 1, "max": 8})
    # bits: 1 only: a pixel is 1 where its 8-bit value >= threshold·256 (the Keras
    # example's binarized MNIST: 0.33); null: value >= 128, as any other bit depth.
    threshold: Optional[float] = field(default=None, metadata={"min_exclusive": 0.0,
                                                               "max": 255 / 256})


@dataclass
class ModelConfig:
    type: str = field(default="pixelcnn", metadata=_choices(_model_types))
    hidden_dim: int = field(default=24, metadata={"min": 1})  # h; the stream has 2h maps
    out_dim: int = field(default=64, metadata={"min": 1})  # width of the output ReLU layer
    n_layers: int = field(default=5, metadata={"min": 0})
    kernel_size: int = field(default=3, metadata={"min": 1, "odd": True})
    input_kernel_size: int = field(default=7, metadata={"min": 1, "odd": True})
    num_classes: int = field(default=0, metadata={"min": 0, "max": MAX_CLASSES})  # 0: unconditional
    # The output distribution: a 256-way softmax per sub-pixel, or PixelCNN++'s
    # discretized logistic mixture per pixel with num_mixtures components.
    output: str = field(default="categorical",
                        metadata=_choices(("categorical", "logistic_mixture")))
    num_mixtures: int = field(default=10, metadata={"min": 1, "max": 64})
    # One dilation rate per pixel layer (pixelcnn, gated_pixelcnn), e.g. [1, 2, 4, 8, 1];
    # null: 1 everywhere.
    dilations: Optional[list] = None
    # The Multi-Scale PixelRNN: {factor: f} models x[::f, ::f] with one network and the
    # rest of x given it with a second (both of model.type); null: one scale.
    multiscale: Optional[dict] = None
    # Dropout in pixelcnn_pp's residual blocks while training (the paper: 0.5 on CIFAR-10).
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max_exclusive": 1.0})
    # pixelcnn_pp: weight normalisation with data-dependent initialisation from the first
    # training batch (the paper's parametrisation).
    weight_norm: bool = False
    # pixelsnail: gated residual convolutions per block, then causal self-attention with
    # num_heads heads of attention_dim query/key/value channels (per colour group).
    convs_per_block: int = field(default=2, metadata={"min": 1, "max": 64})
    num_heads: int = field(default=1, metadata={"min": 1, "max": 64})
    attention_dim: int = field(default=16, metadata={"min": 1, "max": 4096})
    # parallel_multiscale: the base image's height (the image is base_size·2^K high for K
    # doublings), and the base model, any raster-order type, as a model section of its own
    # (null: {type: gated_pixelcnn} with the defaults); it takes model.output,
    # model.num_mixtures and model.num_classes from this section. Once checked, a
    # ModelConfig with every key (so the run's recorded config names them all).
    base_size: int = field(default=4, metadata={"min": 1, "max": 4096})
    base: Optional[dict] = None


@dataclass
class TrainConfig:
    steps: int = field(default=2000, metadata={"min": 0})  # total optimizer steps
    seed: int = field(default=0, metadata={"min": 0, "max": 2**63 - 1})  # int64
    learning_rate: float = field(default=1e-3, metadata={"min_exclusive": 0.0})
    lr_decay_rate: float = field(default=0.999995, metadata={"min_exclusive": 0.0, "max": 1.0})
    lr_decay_steps: int = field(default=1, metadata={"min": 1})
    log_every: int = field(default=50, metadata={"min": 1})
    eval_every: int = field(default=500, metadata={"min": 1})
    eval_batches: int = field(default=0, metadata={"min": 0})  # 0: the whole split
    checkpoint_every: int = field(default=500, metadata={"min": 1})
    keep_checkpoints: int = field(default=3, metadata={"min": 1})
    sample_every: int = field(default=1000, metadata={"min": 1})
    max_bad_steps: int = field(default=5, metadata={"min": 1})  # non-finite batches in a row
    ema_decay: float = field(default=0.0, metadata={"min": 0.0, "max_exclusive": 1.0})
    distribute: str = field(default="none",
                            metadata=_choices(("none", "mirrored", "multi_worker")))
    mixed_precision: str = field(default="none",
                                 metadata=_choices(("none", "bfloat16", "float16")))
    # The whole training step compiled with XLA: auto = on GPUs, off on CPUs (what
    # measured faster on each; docs/training.md).
    jit_compile: str = field(default="auto", metadata=_choices(("auto", "true", "false")))
    recompute: bool = False  # blocks' activations recomputed in the backward pass
    # Held-out bits/dim of the weights and of their moving average on the first
    # progress_images validation images, every progress_every steps (0: never).
    progress_every: int = field(default=1000, metadata={"min": 0})
    progress_images: int = field(default=500, metadata={"min": 1})


@dataclass
class SampleConfig:
    method: str = field(default="fast", metadata=_choices(_sample_methods))
    n_images: int = field(default=16, metadata={"min": 1, "max": MAX_SAMPLES})
    temperature: float = field(default=1.0, metadata={"min_exclusive": 0.0})
    seed: int = field(default=1234, metadata={"min": 0, "max": 2**63 - 1})  # int64


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                  "sample": SampleConfig}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Checks ``value`` against the field type; ints are accepted for floats."""
    optional = False
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be empty (null); it needs a {annotation.__name__}")
    if annotation is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}={_show(value)} must be a finite number")
        return value
    if annotation is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e5 in YAML is a float
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if annotation is str and isinstance(value, bool):
        return "true" if value else "false"  # YAML reads true / false as booleans
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={_show(value)} has the wrong type: expected "
                          f"{annotation.__name__}, got {type(value).__name__}")
    return value


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={_show(value)} is not allowed; allowed values: "
                          f"{', '.join(map(str, choices))}")
    if value is None:
        return
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{key}={_show(value)} is out of range: it must be >= {meta['min']}")
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        raise ConfigError(f"{key}={_show(value)} is out of range: it must be > {meta['min_exclusive']}")
    if "max_exclusive" in meta and value >= meta["max_exclusive"]:
        raise ConfigError(f"{key}={_show(value)} is out of range: it must be < {meta['max_exclusive']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{key}={_show(value)} is out of range: it must be <= {meta['max']}")
    if meta.get("odd") and value % 2 == 0:
        raise ConfigError(f"{key}={_show(value)} must be odd (masked kernels need a centre), "
                          f"e.g. {value + 1}")


def _section_from_dict(section: str, values: Mapping[str, Any], prefix: str = ""):
    """The dataclass of ``section`` from ``values``, every key checked; messages name
    keys ``{prefix or section}.key``."""
    cls = _SECTION_TYPES[section]
    prefix = prefix or section
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{section}' must be a mapping of keys to values, "
                          f"got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}.{key}'; allowed keys in "
                              f"'{prefix}': {', '.join(fields)}")
        full = f"{prefix}.{key}"
        value = _coerce(full, value, hints[key])
        _check_value(full, value, fields[key].metadata)
        kwargs[key] = value
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults are checked too (e.g. dynamic choices)
        if name not in kwargs:
            _check_value(f"{prefix}.{name}", getattr(obj, name), f.metadata)
    return obj


def config_from_dict(raw: Optional[Mapping[str, Any]]) -> Config:
    raw = dict(raw or {})
    unknown = [k for k in raw if k not in _SECTION_TYPES]
    if unknown:
        raise ConfigError(f"unknown config section '{unknown[0]}'; allowed sections: "
                          f"{', '.join(_SECTION_TYPES)}")
    config = Config(**{name: _section_from_dict(name, raw.get(name) or {})
                       for name in _SECTION_TYPES})
    _check_cross_fields(config)
    return config


def _check_cross_fields(config: Config) -> None:
    model = config.model
    _check_model(model)
    if config.data.threshold is not None and config.data.bits != 1:
        raise ConfigError(f"data.threshold={config.data.threshold:g} binarizes images, but "
                          f"data.bits={config.data.bits}: add --set data.bits=1, or --set "
                          f"data.threshold=null")
    if config.data.dataset == "npz" and not config.data.path:
        raise ConfigError("data.path must name an .npz file when data.dataset=npz "
                          "(e.g. --set data.path=images.npz)")
    if config.data.dataset != "npz" and config.data.path:
        raise ConfigError(f"data.path={_show(config.data.path)} is only read when "
                          f"data.dataset=npz, but data.dataset={config.data.dataset}: add "
                          f"--set data.dataset=npz, or --set data.path=null")


def _check_model(model: ModelConfig, prefix: str = "model") -> None:
    """The checks across the keys of a model section (``prefix``: its name in messages)."""
    _check_type_options(model, prefix)
    if model.dilations is not None:
        _check_dilations(model)
    if model.multiscale is not None:
        _check_multiscale(model)
    if model.type == "parallel_multiscale":
        model.base = base_config(model)  # from here on a ModelConfig, all keys explicit


# The base of a parallel_multiscale model takes these from the model section.
BASE_INHERITS = ("output", "num_mixtures", "num_classes")


def base_config(model: ModelConfig) -> ModelConfig:
    """The base model of a ``parallel_multiscale`` model (``model.base``: a mapping, or
    None for a gated PixelCNN) as a checked ``ModelConfig``: any raster-order type, one
    scale, with the model section's output, num_mixtures and num_classes."""
    raw = dict(model.base or {})
    for key in BASE_INHERITS:
        if key in raw and raw[key] != getattr(model, key):
            raise ConfigError(f"model.base.{key}={_show(raw[key])}: the base model takes "
                              f"model.{key} ({_show(getattr(model, key))}); remove "
                              f"model.base.{key} and set model.{key}")
        raw[key] = getattr(model, key)
    raw.setdefault("type", "gated_pixelcnn")
    if raw["type"] == "parallel_multiscale" or raw.get("multiscale") is not None:
        raise ConfigError(f"model.base.type={_show(raw['type'])}"
                          f"{' with model.base.multiscale' if raw.get('multiscale') else ''}"
                          f": the base image is modelled in raster order; use a one-scale "
                          f"raster type, e.g. model.base={{type: gated_pixelcnn}}")
    base = _section_from_dict("model", raw, prefix="model.base")
    _check_model(base, prefix="model.base")
    return base


def _check_type_options(model: ModelConfig, prefix: str = "model") -> None:
    """Every model key set away from its default must be one the type takes
    (``models.TYPES``): a key a type would ignore is refused, never ignored."""
    from pixelcnn_tf.models import type_options, types_taking
    taken = type_options(model.type)
    for f in dataclasses.fields(ModelConfig):
        value = getattr(model, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name not in taken and value != default:
            raise ConfigError(
                f"{prefix}.{f.name}={_show(value)} is not an option of {prefix}.type="
                f"{model.type} (used by {', '.join(types_taking(f.name))}); remove it (or "
                f"--set {prefix}.{f.name}={'null' if default is None else _show(default)})")


MAX_DILATION = 1024


def _check_dilations(model: ModelConfig) -> None:
    rates = model.dilations
    if len(rates) != model.n_layers:
        raise ConfigError(f"model.dilations={_show(rates)} must give one rate per pixel layer:"
                          f" model.n_layers={model.n_layers}, got {len(rates)} rates")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= MAX_DILATION:
            raise ConfigError(f"model.dilations={_show(rates)}: every rate must be an integer "
                              f"from 1 to {MAX_DILATION}, got {_show(rate)}")


MULTISCALE_KEYS = ("factor",)


def _check_multiscale(model: ModelConfig) -> None:
    settings = model.multiscale
    unknown = [k for k in settings if k not in MULTISCALE_KEYS]
    if unknown:
        raise ConfigError(f"unknown key model.multiscale.{_show(unknown[0])[1:-1]}; allowed: "
                          f"{', '.join(MULTISCALE_KEYS)} (e.g. model.multiscale={{factor: 2}})")
    factor = settings.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, int) or not 2 <= factor <= 64:
        raise ConfigError(f"model.multiscale.factor={_show(factor)} must be an integer from 2 "
                          f"to 64 (the small image is x[::factor, ::factor]), e.g. "
                          f"model.multiscale={{factor: 2}}")


def config_to_dict(config: Config) -> Dict[str, Dict[str, Any]]:
    return dataclasses.asdict(config)


def parse_override(override: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` → (section, key, YAML-parsed value)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value, "
                          f"e.g. train.steps=100")
    path, text = override.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {path!r} must be section.key with a section in "
                          f"{', '.join(_SECTION_TYPES)}, e.g. train.steps=100")
    try:
        value = safe_load_yaml(text, f"override {_show(override)}") if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {_show(override)}: the value is not valid YAML "
                          f"({_show(str(e))})") from None
    return parts[0], parts[1], value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``raw`` with every override applied. ``data.path=FILE.npz`` without a
    ``data.dataset`` override also sets ``data.dataset=npz``: the path names the data."""
    raw = {k: dict(v or {}) if isinstance(v, Mapping) else v for k, v in (raw or {}).items()}
    keys = set()
    for override in overrides:
        section, key, value = parse_override(override)
        if section not in _SECTION_TYPES:
            raise ConfigError(f"unknown config section '{section}' in override "
                              f"{_show(override)}; allowed sections: {', '.join(_SECTION_TYPES)}")
        if not isinstance(raw.setdefault(section, {}), dict):
            raw[section] = {}  # a malformed section is reported by config_from_dict
        raw[section][key] = value
        keys.add((section, key))
    path = raw.get("data", {}).get("path") if isinstance(raw.get("data"), dict) else None
    if (("data", "path") in keys and ("data", "dataset") not in keys
            and isinstance(path, str) and path.lower().endswith(".npz")):
        raw["data"]["dataset"] = "npz"
    return raw


def read_yaml(path: str) -> Dict[str, Any]:
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory; pass a YAML file such as "
                          f"configs/quickstart.yml")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1_000_001)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file (not UTF-8); pass a YAML "
                          f"file such as configs/quickstart.yml") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    if len(text) > 1_000_000:
        raise ConfigError(f"config file {path} is larger than 1 MB; a config is a few "
                          f"hundred bytes of YAML")
    if "\0" in text:
        raise ConfigError(f"config file {path} is not a text file (it holds NUL bytes); "
                          f"pass a YAML file such as configs/quickstart.yml")
    try:
        raw = safe_load_yaml(text, f"config file {path}")
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: "
                          f"{_show(str(e)).strip(chr(39))}") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections "
                          f"({', '.join(_SECTION_TYPES)}), got {type(raw).__name__}")
    for section, values in (raw or {}).items():
        if section == BASE_KEY:
            continue  # a file name, resolved by read_config_file
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"config file {path}: section '{_show(section)[1:-1]}' must be "
                              f"a mapping of keys to values, got {_show(values)}")
    return raw or {}


BASE_KEY = "base"  # a config may say only what differs from another: base: quickstart.yml
MAX_BASE_DEPTH = 8


def read_config_file(path: str, _children: tuple = ()) -> Dict[str, Any]:
    """The sections of the config file ``path``, with its ``base`` resolved: a file that
    names ``base: OTHER.yml`` (a path relative to its own folder) starts from OTHER's
    resolved sections and changes the keys it sets (key by key; a key's value is replaced
    whole)."""
    raw = dict(read_yaml(path))
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {path}: base={_show(base)} must name another config "
                          f"file, e.g. base: quickstart.yml")
    chain = (*_children, os.path.abspath(path))
    base_path = os.path.join(os.path.dirname(path), base)
    if os.path.abspath(base_path) in chain or len(chain) > MAX_BASE_DEPTH:
        raise ConfigError(f"config file {path}: base: {base} leads back to itself (or more "
                          f"than {MAX_BASE_DEPTH} files deep); name a complete config file")
    merged = {section: dict(values or {})
              for section, values in read_config_file(base_path, chain).items()}
    for section, values in raw.items():
        merged.setdefault(section, {}).update(values or {})
    return merged


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> Config:
    """Reads ``path`` (YAML, its ``base`` resolved; None for all defaults), applies
    overrides, validates."""
    raw = read_config_file(path) if path else {}
    return config_from_dict(apply_overrides(raw, overrides))


def save_config(config: Config, path: str) -> None:
    """Writes the resolved config as plain YAML (``yaml.safe_dump``: reloadable anywhere),
    atomically."""
    from pixelcnn_tf.files import write_text_atomically
    write_text_atomically(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def check_model_fits_images(model: ModelConfig, image_shape: Sequence[int]) -> None:
    """Raises ConfigError when the model widths cannot be split into the image's colours."""
    channels = int(image_shape[-1])
    if channels not in (1, 3):
        raise ConfigError(f"images have {channels} channels; models support 1 (grey) or 3 "
                          f"(RGB) channels")
    if model.multiscale:
        height, width = (int(d) for d in image_shape[:2])
        factor = model.multiscale["factor"]
        if height % factor or width % factor:
            raise ConfigError(f"model.multiscale.factor={factor} must divide the image size "
                              f"{height}x{width} (the small image is x[::{factor}, ::{factor}])")
    if model.type == "parallel_multiscale":
        check_model_fits_images(model.base, parallel_base_shape(model, image_shape))
        return
    if model.type == "pixelcnn_pp":
        if model.output == "categorical" and channels != 1:
            raise ConfigError(f"model.type=pixelcnn_pp predicts whole pixels (no colour masks): "
                              f"a categorical output needs grey images, these have {channels} "
                              f"channels; add --set model.output=logistic_mixture")
        height, width = (int(d) for d in image_shape[:2])
        if height % 4 or width % 4:
            raise ConfigError(f"model.type=pixelcnn_pp halves the image twice: its height and "
                              f"width must be multiples of 4, got {height}x{width}")
        return
    groups = channels if model.output == "categorical" else 1  # colour groups of the masks
    if groups == 1 and model.input_kernel_size == 1:
        raise ConfigError("model.input_kernel_size=1 gives a mask-A input kernel that sees "
                          "no earlier pixel (the model would never see its input); use 3 "
                          "or more, e.g. 7")
    if groups == 3:
        for key in ("hidden_dim", "out_dim"):
            value = getattr(model, key)
            if value % 3:
                raise ConfigError(
                    f"model.{key}={value} must be divisible by 3 for RGB images (channels are "
                    f"split into R|G|B groups); try {value - value % 3} or "
                    f"{value + 3 - value % 3}")


def parallel_base_shape(model: ModelConfig, image_shape: Sequence[int]) -> tuple:
    """The base image shape ``(base_size, W / 2^K, C)`` of a ``parallel_multiscale`` model
    for images ``image_shape`` (height ``base_size·2^K``, K >= 1 doublings), or a
    ConfigError that names the sizes that work."""
    height, width, channels = (int(d) for d in image_shape)
    size = model.base_size
    doublings = 0
    while size << doublings < height:
        doublings += 1
    if doublings == 0 or size << doublings != height or width % (1 << doublings):
        sizes = [height >> k for k in range(1, 13) if height % (1 << k) == 0
                 and width % (1 << k) == 0]
        raise ConfigError(f"model.base_size={size} does not fit images {height}x{width}: "
                          f"the height must be base_size·2^K (K >= 1 doublings) and the width "
                          f"a multiple of 2^K; base sizes that fit: "
                          f"{', '.join(map(str, sizes)) or 'none (the height is odd)'}")
    return (size, width >> doublings, channels)
