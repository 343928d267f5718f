"""The Trainer: optimizer and schedule, checkpoints, TensorBoard, evaluation.

Workdir layout::

  config.yml        the resolved config (yaml.safe_dump; what evaluate.py reloads)
  model_info.json   image shape, classes and parameter count of the model
  checkpoints/      tf.train.CheckpointManager: model, optimizer (with its step), RNG
  train/ validation/  TensorBoard event files
  samples/          PNG sample grids, one per sampling step
  saved_model/      the exported SavedModel (see export.py)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from pixelcnn_tf import data as data_lib
from pixelcnn_tf import viz
from pixelcnn_tf.config import (Config, ConfigError, check_model_fits_images,
                                config_to_dict, read_yaml, save_config,
                                write_text_atomically)
from pixelcnn_tf.errors import TrainingError
from pixelcnn_tf.likelihood import bits_per_dim, mean_bits_per_dim, nll_per_image
from pixelcnn_tf.models import build_model, count_parameters
from pixelcnn_tf.sampling import generate_images

CONFIG_FILE = "config.yml"
MODEL_INFO_FILE = "model_info.json"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
SAVED_MODEL_DIR = "saved_model"
COMPUTE_DTYPES = {"none": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}
LOSS_SCALE_GROWTH_STEPS = 2000


@dataclasses.dataclass
class EvalResult:
    bits_per_dim: float
    num_images: int
    num_dims: int
    total_nats: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def learning_rate_schedule(train_config) -> tf.keras.optimizers.schedules.LearningRateSchedule:
    """lr(step) = learning_rate · lr_decay_rate ** (step / lr_decay_steps)."""
    return tf.keras.optimizers.schedules.ExponentialDecay(
        train_config.learning_rate, decay_steps=train_config.lr_decay_steps,
        decay_rate=train_config.lr_decay_rate)


def read_model_info(workdir: str) -> dict:
    path = os.path.join(workdir, MODEL_INFO_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no trained run ({MODEL_INFO_FILE} is "
                                f"missing); train first with train.py --workdir {workdir}")
    with open(path) as f:
        return json.load(f)


def check_resume_compatible(workdir: str, config: Config) -> None:
    """Refuses to resume a run whose saved model settings differ from ``config``."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    saved = read_yaml(path).get("model", {})
    for key, value in config_to_dict(config)["model"].items():
        if key in saved and saved[key] != value:
            raise ConfigError(
                f"model.{key}={value!r} differs from the run in {workdir} "
                f"(model.{key}={saved[key]!r}); use a new --workdir, or keep "
                f"model.{key}={saved[key]!r} to resume")


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


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``none``: the default (one device). ``mirrored``: MirroredStrategy over every local
    GPU, or over the logical CPUs when there is no GPU (PIXELCNN_TF_CPU_DEVICES=N makes N).
    ``multi_worker``: MultiWorkerMirroredStrategy over the machines of ``TF_CONFIG``."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribute=multi_worker needs TF_CONFIG describing the "
                              "workers (see the README), or use train.distribute=mirrored")
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = ([d.name for d in tf.config.list_logical_devices("GPU")]
               or [d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.MirroredStrategy(devices)


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


class _StopRequest:
    """Turns SIGINT / SIGTERM into a request to stop after the current step."""

    def __init__(self):
        self.signal: Optional[str] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Owns a model, its Adam optimizer with an exponential-decay schedule, a
    ``tf.train.CheckpointManager`` and the TensorBoard writers of one workdir."""

    def __init__(self, config: Config, workdir: str, image_shape: Sequence[int],
                 strategy: Optional[tf.distribute.Strategy] = None):
        check_model_fits_images(config.model, image_shape)
        self.config = config
        self.workdir = workdir
        self.image_shape = tuple(int(d) for d in image_shape)
        tf.random.set_seed(config.train.seed)  # deterministic initialisation
        self.strategy = strategy or make_strategy(config.train.distribute)
        self.is_chief = _is_chief(self.strategy)
        # Every worker takes part in saving; only the chief writes into the workdir.
        self._scratch = None if self.is_chief else tempfile.mkdtemp(prefix="pixelcnn_worker_")
        replicas = self.strategy.num_replicas_in_sync
        if config.data.batch_size % replicas:
            raise ConfigError(f"data.batch_size={config.data.batch_size} must be divisible by "
                              f"the {replicas} replicas of train.distribute="
                              f"{config.train.distribute}")
        self.compute_dtype = COMPUTE_DTYPES[config.train.mixed_precision]
        self.conditional = config.model.num_classes > 0
        with self.strategy.scope():  # variables mirrored on every replica when distributed
            self.model = build_model(config.model, self.image_shape, self.compute_dtype)
            # float16 needs loss scaling so small gradients do not underflow; bfloat16 has
            # float32's exponent range and needs none.
            self.loss_scale = self._good_steps = None
            if self.compute_dtype == tf.float16:
                self.loss_scale = tf.Variable(2.0**15, trainable=False, name="loss_scale")
                self._good_steps = tf.Variable(0, trainable=False, name="good_steps")
            self.optimizer = tf.keras.optimizers.Adam(learning_rate_schedule(config.train))
            self.optimizer.build(self.model.trainable_variables)
            self.average = (WeightAverage(self.model.trainable_variables,
                                          config.train.ema_decay)
                            if config.train.ema_decay > 0 else None)
        self.rng = tf.random.Generator.from_seed(config.train.seed)
        parts = {"average": self.average} if self.average is not None else {}
        if self.loss_scale is not None:
            parts.update(loss_scale=self.loss_scale, good_steps=self._good_steps)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              rng=self.rng, **parts)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.worker_path(CHECKPOINT_DIR),
            max_to_keep=config.train.keep_checkpoints)
        signature = [tf.TensorSpec([None, *self.image_shape], tf.uint8),
                     tf.TensorSpec([None], tf.int32)]
        self.train_step = tf.function(self._train_step, input_signature=signature)
        self.distributed_train_step = tf.function(self._distributed_train_step)
        self.eval_step = tf.function(self._eval_step, input_signature=signature)

    # -- state ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Optimizer steps taken so far (saved in every checkpoint)."""
        return int(self.optimizer.iterations.numpy())

    def worker_path(self, name: str) -> str:
        """``workdir/name`` on the chief; a scratch directory on other workers."""
        return os.path.join(self.workdir if self.is_chief else self._scratch, name)

    def remove_scratch(self) -> None:
        """Deletes a non-chief worker's scratch directory (its throw-away saves)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def restore(self) -> bool:
        """Restores the latest checkpoint of the workdir, if any. Returns whether it did."""
        latest = tf.train.latest_checkpoint(os.path.join(self.workdir, CHECKPOINT_DIR))
        if latest is None:
            return False
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise ConfigError(f"checkpoint {latest} does not fit this model config "
                              f"({type(e).__name__}: {str(e).splitlines()[0]}); use a new "
                              f"--workdir or the config the run was started with") from None
        return True

    def checkpoint_bytes(self) -> int:
        """Approximate size of one checkpoint: weights, Adam's two moments, averages."""
        n = count_parameters(self.model)
        return 4 * n * (3 + (1 if self.average is not None else 0))

    def check_disk_space(self) -> None:
        """Fails before training when the workdir's disk cannot hold the checkpoints."""
        need = self.checkpoint_bytes() * (self.config.train.keep_checkpoints + 1) + 50 * 2**20
        free = shutil.disk_usage(self.workdir).free
        if free < need:
            raise ConfigError(
                f"the disk of --workdir {self.workdir} has {free / 2**20:.0f} MiB free but "
                f"{self.config.train.keep_checkpoints} checkpoints of this model need about "
                f"{need / 2**20:.0f} MiB; free some space, choose another --workdir or lower "
                f"train.keep_checkpoints")

    def save(self) -> str:
        return self.manager.save(checkpoint_number=self.step)

    # -- steps ---------------------------------------------------------------------------
    def _logits(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        inputs = tf.cast(images, tf.float32) / 255.0  # uint8 → [0, 1]
        return self.model(inputs, labels if self.conditional else None)

    def _loss_and_grads(self, images: tf.Tensor, labels: tf.Tensor, global_batch=None):
        """Loss in bits/dim and its gradients for (a replica's share of) a batch.

        With ``global_batch`` the loss is this share's summed NLL / (global batch · dims ·
        ln 2), so summing it over replicas gives the mean over the whole batch.
        """
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self._logits(images, labels)
            if global_batch is None:
                loss = mean_bits_per_dim(logits, images)
            else:
                dims = float(np.prod(self.image_shape)) * math.log(2.0)
                loss = tf.reduce_sum(nll_per_image(logits, images)) / (global_batch * dims)
            scaled = loss * self.loss_scale if self.loss_scale is not None else loss
        grads = tape.gradient(scaled, variables)
        if self.loss_scale is not None:
            grads = [g / self.loss_scale for g in grads]
        return loss, grads

    def _train_step(self, images: tf.Tensor, labels: tf.Tensor):
        """One Adam step on a batch; skipped when the loss or gradients are not finite.

        Returns (loss in bits/dim, global gradient norm, whether the step was applied).
        """
        loss, grads = self._loss_and_grads(images, labels)
        return self._apply(loss, grads)

    def _distributed_train_step(self, images, labels):
        """``_train_step`` over the replicas of ``train.distribute``: each replica takes
        its share of the global batch; losses and gradients are summed across replicas
        (all-reduce) and the step is applied once, in cross-replica context."""
        global_batch = self.config.data.batch_size

        def replica_step(images, labels):
            loss, grads = self._loss_and_grads(images, labels, global_batch)
            context = tf.distribute.get_replica_context()
            return (context.all_reduce(tf.distribute.ReduceOp.SUM, loss),
                    context.all_reduce(tf.distribute.ReduceOp.SUM, grads))

        loss, grads = self.strategy.run(replica_step, (images, labels))

        def first(value):  # all replicas hold the same all-reduced value
            return self.strategy.experimental_local_results(value)[0]

        return self._apply(first(loss), [first(g) for g in grads])

    def _apply(self, loss: tf.Tensor, grads):
        """Applies ``grads`` unless they or ``loss`` are not finite."""
        variables = self.model.trainable_variables
        grad_norm = tf.linalg.global_norm(grads)
        finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(grad_norm))
        if self.loss_scale is not None:
            self._update_loss_scale(finite)

        def apply():
            self.optimizer.apply_gradients(zip(grads, variables))
            if self.average is not None:
                self.average.update(self.optimizer.iterations)
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        return loss, grad_norm, applied

    def _update_loss_scale(self, finite: tf.Tensor) -> None:
        """Dynamic loss scaling (float16): halve on overflow, double after 2,000 good steps."""
        good = tf.where(finite, self._good_steps + 1, 0)
        grow = good >= LOSS_SCALE_GROWTH_STEPS
        scale = tf.where(finite, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                         tf.maximum(self.loss_scale / 2.0, 1.0))
        self.loss_scale.assign(scale)
        self._good_steps.assign(tf.where(grow, 0, good))

    def _eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """NLL in nats of each image ``[B]``."""
        return nll_per_image(self._logits(images, labels), images)

    def inference_weights(self):
        """Context in which the model holds the weights used for evaluation, sampling and
        export: the moving averages when ``train.ema_decay > 0``, else the weights."""
        if self.average is None:
            return contextlib.nullcontext()
        return self.average.swapped_in()

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

    # -- the loop ------------------------------------------------------------------------
    def fit(self, train_split: data_lib.Split, val_split: Optional[data_lib.Split]) -> dict:
        """Trains until ``train.steps`` optimizer steps, resuming from the workdir."""
        cfg = self.config
        if self.is_chief:
            os.makedirs(os.path.join(self.workdir, SAMPLES_DIR), exist_ok=True)
            save_config(cfg, os.path.join(self.workdir, CONFIG_FILE))
            write_text_atomically(os.path.join(self.workdir, MODEL_INFO_FILE), json.dumps(
                {"image_shape": list(self.image_shape), "num_classes": cfg.model.num_classes,
                 "parameters": count_parameters(self.model)}, indent=2))
        start = self.step
        # A new shuffle seed per (re)start, drawn from the checkpointed generator.
        shuffle_seed = int(self.rng.uniform([], 0, 2**31 - 1, dtype=tf.int64).numpy())
        train_ds = data_lib.train_pipeline(train_split, cfg.data.batch_size,
                                           cfg.data.shuffle_buffer, shuffle_seed,
                                           cfg.data.cache_mb)
        train_step = self.train_step
        if cfg.train.distribute != "none":
            options = tf.data.Options()  # each worker takes its share of every batch
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA)
            train_ds = self.strategy.experimental_distribute_dataset(
                train_ds.with_options(options))
            train_step = self.distributed_train_step
        val_ds = (data_lib.eval_pipeline(val_split, cfg.data.eval_batch_size)
                  if val_split is not None else None)
        if self.is_chief:  # summaries, validation and samples are written once
            train_writer = tf.summary.create_file_writer(os.path.join(self.workdir, "train"))
            val_writer = tf.summary.create_file_writer(
                os.path.join(self.workdir, "validation"))
        else:
            train_writer = val_writer = tf.summary.create_noop_writer()
            val_ds = None
        result: dict = {"start_step": start}

        from tqdm import tqdm
        bar = tqdm(total=cfg.train.steps, initial=start, desc="train", unit="step",
                   dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                   disable=start >= cfg.train.steps)
        window_loss, window_steps, window_time, window_input = 0.0, 0, 0.0, 0.0
        step = start
        bad_steps = 0
        iterator = iter(train_ds)
        stop = _StopRequest()
        try:
            while step < cfg.train.steps:
                if stop.signal is not None:
                    path = self.save()
                    bar.write(f"received {stop.signal}: stopped after step {step}, saved "
                              f"{path}; run the same command again to resume")
                    result["interrupted"] = stop.signal
                    break
                t0 = time.perf_counter()  # input + step only: eval / sampling excluded
                images, labels = next(iterator)
                window_input += time.perf_counter() - t0  # waiting for the input pipeline
                loss, grad_norm, applied = train_step(images, labels)
                loss = float(loss)
                window_time += time.perf_counter() - t0
                if not bool(applied) and self.loss_scale is not None and math.isfinite(loss):
                    continue  # float16 overflow: the loss scale was halved; try again
                if not bool(applied):
                    bad_steps += 1
                    bar.write(f"step {step + 1}: non-finite loss ({loss:.4g}) or gradient "
                              f"norm ({float(grad_norm):.4g}); batch skipped "
                              f"({bad_steps}/{cfg.train.max_bad_steps})")
                    if bad_steps >= cfg.train.max_bad_steps:
                        raise TrainingError(
                            f"the loss or gradient was non-finite for {bad_steps} batches in "
                            f"a row at step {step + 1}; no step was applied and the last "
                            f"checkpoint is untouched. Lower train.learning_rate (or train "
                            f"in float32) and resume from the workdir.")
                    continue
                bad_steps = 0
                step += 1
                window_loss += loss
                window_steps += 1
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    ips = window_steps * cfg.data.batch_size / max(window_time, 1e-9)
                    mean_loss = window_loss / window_steps
                    with train_writer.as_default(step=step):
                        tf.summary.scalar("bits_per_dim", mean_loss)
                        tf.summary.scalar("learning_rate",
                                          float(self.optimizer.learning_rate.numpy()))
                        tf.summary.scalar("grad_norm", float(grad_norm))
                        tf.summary.scalar("images_per_sec", ips)
                        # Share of the step time spent waiting for batches: near 0 when
                        # the input pipeline keeps up with training.
                        tf.summary.scalar("input_wait_fraction",
                                          window_input / max(window_time, 1e-9))
                    bar.set_postfix({"bits/dim": f"{mean_loss:.3f}", "img/s": f"{ips:.0f}"},
                                    refresh=False)
                    result["train_bits_per_dim"] = mean_loss
                    result["images_per_sec"] = ips
                    result["input_wait_fraction"] = window_input / max(window_time, 1e-9)
                    window_loss, window_steps, window_time, window_input = 0.0, 0, 0.0, 0.0
                bar.update(1)
                last = step == cfg.train.steps
                if step % cfg.train.checkpoint_every == 0 or last:
                    self.save()
                if val_ds is not None and (step % cfg.train.eval_every == 0 or last):
                    with self.inference_weights():
                        ev = self.evaluate(val_ds, cfg.train.eval_batches)
                    with val_writer.as_default(step=step):
                        tf.summary.scalar("bits_per_dim", ev.bits_per_dim)
                    bar.write(f"step {step}: validation bits/dim {ev.bits_per_dim:.4f} "
                              f"({ev.num_images} images)")
                    result["validation"] = ev.as_dict()
                if self.is_chief and (step % cfg.train.sample_every == 0 or last):
                    with self.inference_weights():
                        self._write_samples(train_writer, step)
        finally:
            stop.restore()
            bar.close()
            train_writer.flush()
            val_writer.flush()
        result["step"] = step
        return result

    def _write_samples(self, writer, step: int) -> None:
        images = self.sample()
        title = f"step {step}"
        path = os.path.join(self.workdir, SAMPLES_DIR, f"step_{step:08d}.png")
        png = viz.figure_to_png(viz.grid_figure(images, title))
        with open(path, "wb") as f:
            f.write(png)
        with writer.as_default(step=step):
            tf.summary.image("samples", tf.image.decode_png(png)[None], step=step)
