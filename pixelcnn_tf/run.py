"""A trained run loaded for evaluation, sampling and coding (evaluate.py, compress.py,
decompress.py, the benchmarks): ``load_for_inference(workdir)``. ``ModelRun`` is what
evaluation and sampling need of a run; the Trainer (trainer.py) is one too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf import data as data_lib
from pixelcnn_tf import workdir as workdir_lib
from pixelcnn_tf.config import Config, ConfigError, check_model_fits_images, load_config
from pixelcnn_tf.devices import compute_dtype
from pixelcnn_tf.likelihood import bits_per_dim
from pixelcnn_tf.models import build_model
from pixelcnn_tf.models.base import unit_images
from pixelcnn_tf.sampling import generate_images
from pixelcnn_tf.workdir import CONFIG_FILE


@dataclasses.dataclass
class EvalResult:
    """An exact evaluation over a split: bits/dim (the summed NLL / (dims·ln 2)) and the
    NLL in nats per image (the figure binary-image papers quote)."""
    bits_per_dim: float
    num_images: int
    num_dims: int
    total_nats: float

    @property
    def nats_per_image(self) -> float:
        return self.total_nats / self.num_images

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "nats_per_image": self.nats_per_image}



class WeightAverage(tf.Module):
    """Exponential moving average of variables, kept in shadow variables (checkpointed).

    shadow ← d·shadow + (1 - d)·value after every optimizer step, with
    d = min(decay, (1 + step) / (10 + step)) so the first steps are not dominated by the
    initial weights.
    """

    def __init__(self, variables, decay: float, name=None):
        super().__init__(name=name)
        self.decay = float(decay)
        self._variables = list(variables)
        self.shadows = [tf.Variable(v, trainable=False, name="average") for v in variables]

    def update(self, step: tf.Tensor) -> None:
        step = tf.cast(step, tf.float32)
        d = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for shadow, v in zip(self.shadows, self._variables):
            shadow.assign(d * shadow + (1.0 - d) * v)

    def reset(self) -> None:
        """The averages start again from the variables' current values."""
        for shadow, v in zip(self.shadows, self._variables):
            shadow.assign(v)

    @contextlib.contextmanager
    def swapped_in(self):
        """Within this block the variables hold the averages."""
        backup = [v.numpy() for v in self._variables]
        for v, shadow in zip(self._variables, self.shadows):
            v.assign(shadow)
        try:
            yield
        finally:
            for v, value in zip(self._variables, backup):
                v.assign(value)


class ModelRun:
    """What evaluation and sampling need of a run: ``model``, ``average`` (or None),
    ``config``, ``image_shape``, ``conditional`` and ``eval_step``. The Trainer is one;
    ``load_trained`` makes one from a workdir without an optimizer."""

    model: tf.Module
    average: Optional["WeightAverage"]
    config: Config
    image_shape: tuple
    conditional: bool

    def _batch_signature(self) -> list:
        """(uint8 images [B, H, W, C], int32 labels [B]): what every step function takes."""
        return [tf.TensorSpec([None, *self.image_shape], tf.uint8),
                tf.TensorSpec([None], tf.int32)]

    def _make_eval_step(self):
        # autograph=False: as for the training step (converting the model's code only
        # slowed the tracing: 5.6 → 2.1 s for a quickstart-size PixelCNN++).
        return tf.function(self._eval_step, input_signature=self._batch_signature(),
                           autograph=False)

    def _params(self, images: tf.Tensor, labels: tf.Tensor, training: bool = False,
                recompute: bool = False) -> tf.Tensor:
        """The output distribution's parameters for uint8 ``images`` (``training``: with
        dropout, for models that have it; ``recompute``: blocks recomputed in the
        backward pass, ``train.recompute``)."""
        inputs = unit_images(images, self.model.distribution.n_levels)  # uint8 → [0, 1]
        return self.model(inputs, labels if self.conditional else None, training=training,
                          recompute=recompute)

    def _eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """NLL in nats of each image ``[B]``."""
        return self.model.distribution.nll_per_image(self._params(images, labels), images)

    def inference_weights(self):
        """Context in which the model holds the weights used for evaluation, sampling and
        export: the moving averages when ``train.ema_decay > 0``, else the weights."""
        if self.average is None:
            return contextlib.nullcontext()
        return self.average.swapped_in()

    def initialize_from_data(self, train_split: data_lib.Split) -> bool:
        """Weight normalisation's data-dependent initialisation (``model.weight_norm``) at
        step 0: from the first batch of a pipeline seeded with ``train.seed`` (the same
        batch on every start, and the training batches are not consumed); the moving
        averages then start from the initialised weights. Returns whether it ran (not
        for other models, nor once a step has been taken)."""
        if not getattr(self.model, "weight_norm", False) or self.step > 0:
            return False
        cfg = self.config
        batches = data_lib.train_pipeline(train_split, cfg.data.batch_size,
                                          cfg.data.shuffle_buffer, cfg.train.seed,
                                          cfg.data.cache_mb)
        images, labels = next(iter(batches))
        inputs = unit_images(images, self.model.distribution.n_levels)
        with self.strategy.scope():
            self.model.initialize_from_data(inputs, labels if self.conditional else None)
            if self.average is not None:
                self.average.reset()
        return True

    def evaluate(self, dataset: tf.data.Dataset, max_batches: int = 0) -> EvalResult:
        """Exact bits/dim over ``dataset`` (batches of (uint8 images, labels)): the summed
        NLL of every sub-pixel of every image / (N·H·W·C·ln 2). ``max_batches=0``: all."""
        total, count = 0.0, 0
        for b, (images, labels) in enumerate(dataset):
            if max_batches and b >= max_batches:
                break
            nats = self.eval_step(images, labels).numpy().astype(np.float64)
            total += float(nats.sum())
            count += len(nats)
        if count == 0:
            raise ValueError("the evaluation dataset is empty")
        dims = count * int(np.prod(self.image_shape))
        return EvalResult(bits_per_dim(total, dims), count, dims, total)

    def sample(self, n_images: Optional[int] = None, labels=None) -> np.ndarray:
        s = self.config.sample
        n = n_images or s.n_images
        if self.conditional and labels is None:
            labels = np.arange(n) % self.config.model.num_classes
        return generate_images(self.model, self.image_shape[:2], n, self.image_shape[2],
                               seed=s.seed, temperature=s.temperature, method=s.method,
                               labels=labels)



@dataclasses.dataclass
class TrainedModel(ModelRun):
    """A run's model restored for evaluation and sampling (no optimizer)."""
    model: tf.Module
    average: Optional["WeightAverage"]
    config: Config
    image_shape: tuple
    restored: workdir_lib.Restored
    checkpoint: tf.train.Checkpoint  # the model (and averages) as restored
    workdir: str

    def __post_init__(self):
        self.conditional = self.config.model.num_classes > 0
        self.eval_step = self._make_eval_step()

    @property
    def step(self) -> int:
        return workdir_lib.checkpoint_step(self.restored.path)

    def checkpoints_newest_first(self):
        """Yields the step of each readable checkpoint of the run, newest first, with the
        model holding that checkpoint's weights meanwhile (the one loaded first; then
        the older ones on disk). Checkpoints that do not restore are passed over."""
        yield self.step
        for prefix in workdir_lib.find_checkpoints(self.workdir):
            if workdir_lib.checkpoint_step(prefix) >= self.step:
                continue
            try:
                self.checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError):
                continue
            self.restored = workdir_lib.Restored(prefix, [], [])
            yield self.step


def load_trained(config: Config, workdir: str, image_shape: Sequence[int]) -> TrainedModel:
    """Builds the model of ``config`` and restores the newest checkpoint of ``workdir`` that
    restores completely (damaged newer ones are skipped and named, never moved: a run may
    be training there). Raises ConfigError when there is none."""
    image_shape = tuple(int(d) for d in image_shape)
    check_model_fits_images(config.model, image_shape)
    model = build_model(config.model, image_shape, compute_dtype(config.train.mixed_precision),
                        bits=config.data.bits)
    parts = {}
    average = None
    if config.train.ema_decay > 0:
        average = WeightAverage(model.trainable_variables, config.train.ema_decay)
        parts["average"] = average
    checkpoint = tf.train.Checkpoint(model=model, **parts)
    restored = workdir_lib.restore_newest(checkpoint, workdir, move_aside=False, partial=True)
    if restored is None:
        raise ConfigError(f"{workdir} has no checkpoint; train first with train.py "
                          f"--workdir {workdir}")
    return TrainedModel(model, average, config, image_shape, restored, checkpoint, workdir)


def load_for_inference(workdir: str, overrides: Sequence[str] = ()) -> TrainedModel:
    """The run in ``workdir`` restored for exact evaluation, sampling and coding: its
    config (with ``overrides``) in float32 arithmetic on the float32 weights, whatever
    precision it trained in (a later ``train.mixed_precision=...`` override trades that
    for speed)."""
    info = workdir_lib.read_model_info(workdir)
    config = load_config(os.path.join(workdir, CONFIG_FILE),
                         ["train.mixed_precision=none", *overrides])
    workdir_lib.check_resume_compatible(workdir, config)  # overrides keep the model's meaning
    return load_trained(config, workdir, info["image_shape"])

