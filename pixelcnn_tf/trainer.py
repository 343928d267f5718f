"""The Trainer: optimizer and schedule, checkpoints, TensorBoard, evaluation.

The run directory's layout and rules (lock, checkpoint recovery, resume checks) live in
``pixelcnn_tf.workdir``.
"""
from __future__ import annotations

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
from pixelcnn_tf import workdir as workdir_lib
from pixelcnn_tf.config import Config, ConfigError, check_model_fits_images, save_config
from pixelcnn_tf.devices import compute_dtype, is_chief_worker, make_strategy, use_jit_compile
from pixelcnn_tf.errors import TrainingError
from pixelcnn_tf.models import build_model, count_parameters
from pixelcnn_tf.run import ModelRun, WeightAverage
from pixelcnn_tf.workdir import CHECKPOINT_DIR, CONFIG_FILE, SAMPLES_DIR

LOSS_SCALE_GROWTH_STEPS = 2000


def learning_rate_schedule(train_config) -> tf.keras.optimizers.schedules.LearningRateSchedule:
    """lr(step) = learning_rate · lr_decay_rate ** (step / lr_decay_steps)."""
    return tf.keras.optimizers.schedules.ExponentialDecay(
        train_config.learning_rate, decay_steps=train_config.lr_decay_steps,
        decay_rate=train_config.lr_decay_rate)


class Adam(tf.keras.optimizers.Adam):
    """Keras's Adam (the same variables, so the same checkpoints; the same update) with
    each variable's update in TensorFlow's fused ``ResourceApplyAdam`` kernel: one op per
    variable where Keras builds about forty, so the training step traces and starts much
    faster for models with many variables (docs/training.md has the measurement). XLA
    compiles the kernel too, and tf.distribute applies it to each replica's copy."""

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        m, v = self._momentums[index].value, self._velocities[index].value
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        # lr·sqrt(1 - β2^t) / (1 - β1^t) · m / (sqrt(v) + ε), m and v updated first: the
        # formula of Keras's Adam.update_step (amsgrad, which we never set, aside).
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.convert_to_tensor(gradient, dtype))


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


class _LogWindow:
    """Running sums between two training log lines (applied steps only for the loss)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.time, self.waited = 0.0, 0, 0.0, 0.0

    def add(self, loss: float, seconds: float, waited: float, applied: bool) -> None:
        self.time += seconds
        self.waited += waited
        if applied:
            self.loss += loss
            self.steps += 1


class _BadSteps:
    """Counts skipped (non-finite) batches in a row and stops the run after ``limit``.

    float16: a batch whose loss is finite but whose gradients overflow halves the loss
    scale and is retried without counting while the halved scale is still above its floor
    of 1 (at most log2(scale) such retries in a row); at the floor such batches count like
    any other, so a run can never skip forever.
    """

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0

    def reset(self) -> None:
        self.count = 0

    def skipped(self, step: int, loss: float, grad_norm: float, loss_scale) -> str:
        if loss_scale is not None and math.isfinite(loss) and float(loss_scale) > 1.0:
            return (f"step {step}: float16 gradients overflowed; loss scale halved to "
                    f"{float(loss_scale):g}, batch retried")
        self.count += 1
        if self.count >= self.limit:
            raise TrainingError(
                f"the loss or gradient was non-finite for {self.count} batches in a row at "
                f"step {step}; no step was applied and the last checkpoint is untouched. "
                f"Lower train.learning_rate (or train in float32) and resume from the workdir.")
        return (f"step {step}: non-finite loss ({loss:.4g}) or gradient norm "
                f"({grad_norm:.4g}); batch skipped ({self.count}/{self.limit})")



class Trainer(ModelRun):
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
        self.is_chief = is_chief_worker(self.strategy)
        # Every worker takes part in saving; only the chief writes into the workdir.
        self._scratch = None if self.is_chief else tempfile.mkdtemp(prefix="pixelcnn_worker_")
        replicas = self.strategy.num_replicas_in_sync
        if config.data.batch_size % replicas:
            raise ConfigError(f"data.batch_size={config.data.batch_size} must be divisible by "
                              f"the {replicas} replicas of train.distribute="
                              f"{config.train.distribute}")
        self.compute_dtype = compute_dtype(config.train.mixed_precision)
        self.conditional = config.model.num_classes > 0
        with self.strategy.scope():  # variables mirrored on every replica when distributed
            self.model = build_model(config.model, self.image_shape, self.compute_dtype,
                                     seed=config.train.seed, bits=config.data.bits)
            # float16 needs loss scaling so small gradients do not underflow; bfloat16 has
            # float32's exponent range and needs none.
            self.loss_scale = self._good_steps = None
            if self.compute_dtype == tf.float16:
                self.loss_scale = tf.Variable(2.0**15, trainable=False, name="loss_scale")
                self._good_steps = tf.Variable(0, trainable=False, name="good_steps")
            self.optimizer = Adam(learning_rate_schedule(config.train))
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
        # Made by restore(), once recovery has repaired TensorFlow's checkpoint record
        # (the manager reads it when it starts and fails on a garbled one).
        self._manager: Optional[tf.train.CheckpointManager] = None
        self.restored: Optional[workdir_lib.Restored] = None
        # train.jit_compile: the whole step compiled with XLA (distributed: each replica's
        # loss and gradients; the all-reduce and the update stay in the plain graph).
        self.jit_compile = use_jit_compile(config.train.jit_compile)
        # autograph=False: the step has no Python control flow on tensors (tf.cond is
        # written out), and converting every layer's code would only slow the tracing.
        self.train_step = tf.function(self._train_step, jit_compile=self.jit_compile,
                                      input_signature=self._batch_signature(),
                                      autograph=False)
        self.distributed_train_step = tf.function(self._distributed_train_step,
                                                  autograph=False)
        self._replica_loss_and_grads = (
            tf.function(self._loss_and_grads, jit_compile=True, autograph=False)
            if self.jit_compile
            else self._loss_and_grads)
        self.eval_step = self._make_eval_step()

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
        """Restores the newest checkpoint of the workdir that restores completely, moving
        unreadable newer ones aside (the chief only; see ``workdir.restore_newest``).
        Returns whether it restored one; ``self.restored`` says which and why."""
        self.restored = workdir_lib.restore_newest(self.checkpoint, self.workdir,
                                                   move_aside=self.is_chief)
        self._manager = None  # started again on the repaired record
        return self.restored is not None

    @property
    def manager(self) -> tf.train.CheckpointManager:
        """The CheckpointManager of the workdir (started after ``restore``)."""
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, self.worker_path(CHECKPOINT_DIR),
                max_to_keep=self.config.train.keep_checkpoints)
        return self._manager

    def checkpoint_bytes(self) -> int:
        """Approximate size of one checkpoint: weights, Adam's two moments, averages."""
        n = count_parameters(self.model)
        return 4 * n * (3 + (1 if self.average is not None else 0))

    def check_disk_space(self) -> None:
        """Fails before training when the workdir's disk cannot hold the checkpoints."""
        keep = self.config.train.keep_checkpoints
        workdir_lib.check_disk_space(
            self.workdir, self.checkpoint_bytes() * (keep + 1) + 50 * 2**20,
            f"{keep} checkpoints of this model (train.keep_checkpoints)")

    def save(self) -> str:
        """Writes a checkpoint of the current step. A failed write (a full disk) removes
        its temporary files and raises TrainingError naming the last complete checkpoint,
        which is untouched."""
        try:
            return self.manager.save(checkpoint_number=self.step)
        except (tf.errors.OpError, OSError) as e:
            # The temporaries of this process's save: the workdir, or a worker's scratch.
            workdir_lib.remove_leftovers(os.path.dirname(self.worker_path(CHECKPOINT_DIR)))
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            kept = self.manager.latest_checkpoint
            kept = f"the last complete checkpoint {kept} is kept" if kept else \
                "no earlier checkpoint exists"
            raise TrainingError(f"could not write the checkpoint of step {self.step} "
                                f"({reason}); {kept}. Free disk space in {self.workdir} and "
                                f"run the same command to resume") from None

    # -- steps ---------------------------------------------------------------------------
    def _loss_and_grads(self, images: tf.Tensor, labels: tf.Tensor, global_batch=None):
        """Loss in bits/dim and its gradients for (a replica's share of) a batch.

        With ``global_batch`` the loss is this share's summed NLL / (global batch · dims ·
        ln 2), so summing it over replicas gives the mean over the whole batch.
        """
        variables = self.model.trainable_variables
        distribution = self.model.distribution
        with tf.GradientTape() as tape:
            params = self._params(images, labels, training=True,
                                  recompute=self.config.train.recompute)
            if global_batch is None:
                loss = distribution.mean_bits_per_dim(params, images)
            else:
                dims = float(np.prod(self.image_shape)) * math.log(2.0)
                loss = (tf.reduce_sum(distribution.nll_per_image(params, images))
                        / (global_batch * dims))
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
            loss, grads = self._replica_loss_and_grads(images, labels, global_batch)
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

    # -- the loop ------------------------------------------------------------------------
    def fit(self, train_split: data_lib.Split, val_split: Optional[data_lib.Split]) -> dict:
        """Trains until ``train.steps`` optimizer steps, resuming from the workdir: a
        sequence of small periodic actions (log window, checkpoint, validation, samples)."""
        cfg = self.config.train
        self._write_run_files()
        self.initialize_from_data(train_split)
        train_ds, train_step = self._train_input(train_split)
        val_ds = progress_ds = None
        if val_split is not None and self.is_chief:  # validation and samples: chief only
            val_ds = data_lib.eval_pipeline(val_split, self.config.data.eval_batch_size)
            progress_ds = self._progress_input(val_split)
        writers = self._writers()
        result: dict = {"start_step": self.step}
        step = self.step
        window = _LogWindow()
        bad = _BadSteps(cfg.max_bad_steps)
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step",
                   dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                   disable=step >= cfg.steps)
        iterator = iter(train_ds)
        stop = _StopRequest()
        try:
            while step < cfg.steps:
                if stop.signal is not None:
                    bar.write(f"received {stop.signal}: stopped after step {step}, saved "
                              f"{self.save()}; run the same command again to resume")
                    result["interrupted"] = stop.signal
                    break
                t0 = time.perf_counter()  # input + step only: eval / sampling excluded
                images, labels = next(iterator)
                waited = time.perf_counter() - t0  # waiting for the input pipeline
                loss, grad_norm, applied = train_step(images, labels)
                loss, applied = float(loss), bool(applied)
                window.add(loss, time.perf_counter() - t0, waited, applied)
                if not applied:
                    bar.write(bad.skipped(step + 1, loss, float(grad_norm), self.loss_scale))
                    continue
                bad.reset()
                step += 1
                bar.update(1)
                last = step == cfg.steps
                if step % cfg.log_every == 0 or last:
                    result.update(self._log(writers[0], step, window, float(grad_norm)))
                    bar.set_postfix({"bits/dim": f"{result['train_bits_per_dim']:.3f}",
                                     "img/s": f"{result['images_per_sec']:.0f}"},
                                    refresh=False)
                if step % cfg.checkpoint_every == 0 or last:
                    self.save()
                if val_ds is not None and (step % cfg.eval_every == 0 or last):
                    result["validation"] = self._validate(val_ds, writers[1], step, bar)
                if (progress_ds is not None and cfg.progress_every
                        and step % cfg.progress_every == 0):
                    result["progress"] = self._progress(progress_ds, writers[1], step)
                if self.is_chief and (step % cfg.sample_every == 0 or last):
                    with self.inference_weights():
                        self._write_samples(writers[0], step)
        finally:
            stop.restore()
            bar.close()
            for writer in writers:
                writer.flush()
        result["step"] = step
        return result

    def _write_run_files(self) -> None:
        """The resolved config and model_info.json (the chief only)."""
        if self.is_chief:
            os.makedirs(os.path.join(self.workdir, SAMPLES_DIR), exist_ok=True)
            save_config(self.config, os.path.join(self.workdir, CONFIG_FILE))
            workdir_lib.write_model_info(self.workdir, self.image_shape,
                                         self.config.model.num_classes,
                                         count_parameters(self.model))

    def _train_input(self, train_split: data_lib.Split):
        """(the training batches, the step function that takes them)."""
        cfg = self.config
        # A new shuffle seed per (re)start, drawn from the checkpointed generator.
        shuffle_seed = int(self.rng.uniform([], 0, 2**31 - 1, dtype=tf.int64).numpy())
        train_ds = data_lib.train_pipeline(train_split, cfg.data.batch_size,
                                           cfg.data.shuffle_buffer, shuffle_seed,
                                           cfg.data.cache_mb)
        if cfg.train.distribute == "none":
            return train_ds, self.train_step
        options = tf.data.Options()  # each worker takes its share of every batch
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return (self.strategy.experimental_distribute_dataset(train_ds.with_options(options)),
                self.distributed_train_step)

    def _writers(self):
        """TensorBoard writers (train, validation); no-op writers on non-chief workers."""
        if not self.is_chief:
            return tf.summary.create_noop_writer(), tf.summary.create_noop_writer()
        return (tf.summary.create_file_writer(os.path.join(self.workdir, "train")),
                tf.summary.create_file_writer(os.path.join(self.workdir, "validation")))

    def _log(self, writer, step: int, window: "_LogWindow", grad_norm: float) -> dict:
        """Writes the window's training summaries and starts a new window."""
        ips = window.steps * self.config.data.batch_size / max(window.time, 1e-9)
        figures = {"train_bits_per_dim": window.loss / max(window.steps, 1),
                   "images_per_sec": ips,
                   # Share of the step time spent waiting for batches: near 0 when the
                   # input pipeline keeps up with training.
                   "input_wait_fraction": window.waited / max(window.time, 1e-9)}
        with writer.as_default(step=step):
            tf.summary.scalar("bits_per_dim", figures["train_bits_per_dim"])
            tf.summary.scalar("learning_rate", float(self.optimizer.learning_rate.numpy()))
            tf.summary.scalar("grad_norm", grad_norm)
            tf.summary.scalar("images_per_sec", ips)
            tf.summary.scalar("input_wait_fraction", figures["input_wait_fraction"])
        window.reset()
        return figures

    def _validate(self, val_ds, writer, step: int, bar) -> dict:
        with self.inference_weights():
            ev = self.evaluate(val_ds, self.config.train.eval_batches)
        with writer.as_default(step=step):
            tf.summary.scalar("bits_per_dim", ev.bits_per_dim)
            tf.summary.scalar("nats_per_image", ev.nats_per_image)
        bar.write(f"step {step}: validation bits/dim {ev.bits_per_dim:.4f}, "
                  f"{ev.nats_per_image:.2f} nats/image ({ev.num_images} images)")
        return ev.as_dict()

    def _progress_input(self, val_split: data_lib.Split) -> tf.data.Dataset:
        """The fixed validation subset of the progress figures: its first
        ``train.progress_images`` images, kept in memory after the first pass."""
        batch = self.config.data.eval_batch_size
        return (val_split.dataset.take(self.config.train.progress_images).batch(batch)
                .cache())

    def _progress(self, progress_ds, writer, step: int) -> dict:
        """Held-out bits/dim on the progress subset, of the weights as trained and (with
        ``train.ema_decay``) of their moving average: the raw weights show progress from
        the first steps, while the 0.9995 average lags by thousands of steps."""
        figures = {"weights_bits_per_dim": self.evaluate(progress_ds).bits_per_dim}
        if self.average is not None:
            with self.average.swapped_in():
                figures["average_bits_per_dim"] = self.evaluate(progress_ds).bits_per_dim
        with writer.as_default(step=step):
            for name, value in figures.items():
                tf.summary.scalar(f"progress/{name}", value)
        return figures

    def _write_samples(self, writer, step: int) -> None:
        images = data_lib.to_intensities(self.sample(), self.config.data.bits)
        title = f"step {step}"
        path = os.path.join(self.workdir, SAMPLES_DIR, f"step_{step:08d}.png")
        png = viz.figure_to_png(viz.grid_figure(images, title))
        with open(path, "wb") as f:
            f.write(png)
        with writer.as_default(step=step):
            tf.summary.image("samples", tf.image.decode_png(png)[None], step=step)

