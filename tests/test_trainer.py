import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from pixelcnn_tf import data as data_lib
from pixelcnn_tf.config import ConfigError, load_config, save_config
from pixelcnn_tf.trainer import Trainer, TrainingError
from pixelcnn_tf.workdir import check_resume_compatible


@pytest.fixture
def batch(rng):
    images = tf.constant(rng.integers(0, 256, size=(4, 4, 4, 3)).astype(np.uint8))
    return images, tf.zeros([4], tf.int32)


def test_one_step_lowers_the_loss(tmp_path, batch):
    trainer = Trainer(tiny_config(3), str(tmp_path), (4, 4, 3))
    before = trainer.evaluate([batch]).bits_per_dim
    loss, grad_norm, applied = trainer.train_step(*batch)
    assert bool(applied) and float(grad_norm) > 0
    assert float(loss) == pytest.approx(before, rel=1e-5)  # the loss is bits/dim
    assert trainer.evaluate([batch]).bits_per_dim < before
    assert trainer.step == 1


def test_fused_adam_is_keras_adam_and_a_numpy_reference():
    """Three steps of trainer.Adam (one ResourceApplyAdam per variable) against Keras's
    Adam and the textbook update in numpy, with a decaying learning rate, a dense
    gradient and a gathered (IndexedSlices) one; the slot variables are Keras's."""
    from pixelcnn_tf.trainer import Adam
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    targets = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    results = {}
    for name, cls in (("ours", Adam), ("keras", tf.keras.optimizers.Adam)):
        variables = [tf.Variable(v) for v in start]
        optimizer = cls(schedule)
        optimizer.build(variables)
        for _ in range(3):
            with tf.GradientTape() as tape:
                rows = tf.gather(variables[0], [0, 2])  # an IndexedSlices gradient
                loss = (tf.reduce_sum((rows - targets[0][[0, 2]]) ** 2)
                        + tf.reduce_sum(tf.sin(variables[1] - targets[1])))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        results[name] = [v.numpy() for v in variables]
        if name == "ours":
            assert [len(optimizer._momentums), len(optimizer._velocities)] == [2, 2]
    x, m, v = [a.astype(np.float64) for a in start], [0.0, 0.0], [0.0, 0.0]
    for t in range(1, 4):
        lr = 0.1 * 0.5 ** (t - 1)
        grads = [np.zeros_like(x[0]), np.cos(x[1] - targets[1])]
        grads[0][[0, 2]] = 2 * (x[0][[0, 2]] - targets[0][[0, 2]])
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            step = lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            x[i] = x[i] - step * m[i] / (np.sqrt(v[i]) + 1e-7)
    for ours, keras, want in zip(results["ours"], results["keras"], x):
        np.testing.assert_allclose(ours, want, atol=1e-6)  # off by 1.3e-7 (Keras: 1.3e-6)
        np.testing.assert_allclose(ours, keras, atol=1e-5)  # float32 rounding, steps ~0.1


def test_learning_rate_decays_with_the_optimizer_step(tmp_path, batch):
    cfg = tiny_config(3)
    cfg.train.lr_decay_rate = 0.9
    trainer = Trainer(cfg, str(tmp_path), (4, 4, 3))
    for _ in range(3):
        trainer.train_step(*batch)
    lr = float(trainer.optimizer.learning_rate.numpy())
    assert lr == pytest.approx(1e-3 * 0.9 ** 3, rel=1e-5)


PP_WITH_DROPOUT = dict(type="pixelcnn_pp", output="logistic_mixture", num_mixtures=2,
                      n_layers=1, dropout=0.5)


@pytest.mark.parametrize("model", [{}, PP_WITH_DROPOUT])
def test_checkpoint_round_trip(tmp_path, batch, model):
    """Restored weights, RNG and (pixelcnn_pp) dropout generator: the next step is the
    same."""
    cfg = tiny_config(3, **model)
    trainer = Trainer(cfg, str(tmp_path), (4, 4, 3))
    for _ in range(3):
        trainer.train_step(*batch)
    trainer.save()
    rng_state = trainer.rng.state.numpy().copy()
    logits = trainer.model(tf.cast(batch[0], tf.float32) / 255.0).numpy()

    cfg2 = tiny_config(3, **model)
    cfg2.train.seed = 99  # a different initialisation, overwritten by the restore
    restored = Trainer(cfg2, str(tmp_path), (4, 4, 3))
    assert restored.restore()
    assert restored.step == 3
    np.testing.assert_array_equal(restored.rng.state.numpy(), rng_state)
    np.testing.assert_array_equal(
        restored.model(tf.cast(batch[0], tf.float32) / 255.0).numpy(), logits)
    # Training continues identically from the restored state.
    a = trainer.train_step(*batch)[0]
    b = restored.train_step(*batch)[0]
    assert float(a) == float(b)


def test_restoring_a_different_model_is_a_clear_error(tmp_path, batch):
    trainer = Trainer(tiny_config(3), str(tmp_path), (4, 4, 3))
    trainer.train_step(*batch)
    trainer.save()
    other = Trainer(tiny_config(3, hidden_dim=9), str(tmp_path), (4, 4, 3))
    with pytest.raises(ConfigError, match=r"ckpt-1 does not fit the model of the run's "
                       r"config.yml \(15 variables differ, e.g. model.input_conv.kernel: "
                       r"\[3, 3, 3, 12\] in the checkpoint, \[3, 3, 3, 18\] here\)"):
        other.restore()


def test_resume_with_changed_model_settings_is_refused(tmp_path):
    cfg = tiny_config(1)
    save_config(cfg, str(tmp_path / "config.yml"))
    cfg.train.steps = 10_000  # allowed: does not change the model
    check_resume_compatible(str(tmp_path), cfg)
    cfg.model.n_layers = 7
    with pytest.raises(ConfigError, match=r"model.n_layers=7 differs from the run .* "
                                          r"\(model.n_layers=2\)"):
        check_resume_compatible(str(tmp_path), cfg)


def test_resume_names_the_data_and_precision_that_changed(tmp_path):
    """The bit depth (what the weights mean), float16's loss scale and the run's data are
    named when they differ; other data only with --new-data."""
    from pixelcnn_tf.workdir import check_resume_training
    cfg = tiny_config(1)
    save_config(cfg, str(tmp_path / "config.yml"))
    for key, value, message in (("bits", 1, r"data.bits=1 differs .* \(data.bits=8\)"),
                                ("threshold", 0.5, "data.threshold=0.5 differs")):
        changed = tiny_config(1)
        setattr(changed.data, key, value)
        with pytest.raises(ConfigError, match=message):
            check_resume_compatible(str(tmp_path), changed)
    changed = tiny_config(1)
    changed.train.mixed_precision = "float16"
    with pytest.raises(ConfigError, match="train.mixed_precision=float16 differs .* loss scale"):
        check_resume_training(str(tmp_path), changed)
    changed.train.mixed_precision = "bfloat16"  # no variables of its own: allowed
    check_resume_training(str(tmp_path), changed)
    changed.data.dataset, changed.data.path = "npz", "other.npz"
    with pytest.raises(ConfigError, match="data.dataset='npz' differs .* add --new-data"):
        check_resume_training(str(tmp_path), changed)
    check_resume_training(str(tmp_path), changed, new_data=True)


def npz_splits(tmp_path, rng, n=12):
    path = tmp_path / "d.npz"
    np.savez(path, images=rng.integers(0, 256, (n, 4, 4)).astype(np.uint8))
    cfg = load_config(None, ["data.dataset=npz", f"data.path={path}",
                             "data.validation_size=4"]).data
    return data_lib.load_split(cfg, "train"), data_lib.load_split(cfg, "validation")


def test_fit_writes_everything_and_resumes(tmp_path, rng):
    train, val = npz_splits(tmp_path, rng)
    cfg = tiny_config(1)
    for key, value in dict(steps=4, log_every=2, eval_every=2, checkpoint_every=2,
                           sample_every=4).items():
        setattr(cfg.train, key, value)
    cfg.data.batch_size = 2
    cfg.sample.n_images = 2
    workdir = str(tmp_path / "run")
    result = Trainer(cfg, workdir, (4, 4, 1)).fit(train, val)
    assert result["step"] == 4 and result["validation"]["num_images"] == 4
    for name in ("config.yml", "model_info.json", "checkpoints/checkpoint",
                 "samples/step_00000004.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    cfg.train.steps = 6
    trainer = Trainer(cfg, workdir, (4, 4, 1))
    assert trainer.restore() and trainer.step == 4
    assert trainer.fit(train, val)["step"] == 6


def test_checkpoints_rotate_after_any_number_of_resumes(tmp_path, rng):
    """train.keep_checkpoints holds across resumes: the record a resume rewrites keeps the
    times the CheckpointManager needs to delete the oldest (before, every checkpoint from
    before a resume stayed forever)."""
    train, val = npz_splits(tmp_path, rng)
    cfg = tiny_config(1)
    for key, value in dict(checkpoint_every=5, keep_checkpoints=3, eval_every=1000,
                           sample_every=1000, log_every=1000).items():
        setattr(cfg.train, key, value)
    cfg.data.batch_size = 2
    workdir = str(tmp_path / "run")
    for steps in (20, 35, 50):
        cfg.train.steps = steps
        trainer = Trainer(cfg, workdir, (4, 4, 1))
        trainer.restore()
        trainer.fit(train, val)
        kept = sorted(int(n[len("ckpt-"):-len(".index")]) for n in
                      os.listdir(os.path.join(workdir, "checkpoints")) if n.endswith(".index"))
        assert kept == [steps - 10, steps - 5, steps], kept


def small_run(tmp_path, rng, steps):
    """A grey 4x4 trainer for ``steps`` steps of batch 2, with npz train / val splits."""
    train, val = npz_splits(tmp_path, rng)
    cfg = tiny_config(1)
    cfg.train.steps = steps
    cfg.data.batch_size = 2
    return Trainer(cfg, str(tmp_path / "run"), (4, 4, 1)), train, val


def test_nan_loss_stops_without_touching_checkpoints(tmp_path, rng):
    trainer, train, val = small_run(tmp_path, rng, steps=5)
    bias = trainer.model.output_logits.bias
    bias.assign(tf.fill(bias.shape, np.nan))
    with pytest.raises(TrainingError, match=r"non-finite for 5 batches in a row at step 1; .*"
                                            r"Lower train.learning_rate"):
        trainer.fit(train, val)
    assert trainer.step == 0
    assert trainer.manager.latest_checkpoint is None


def test_isolated_bad_batches_are_skipped(tmp_path, rng):
    trainer, train, val = small_run(tmp_path, rng, steps=4)
    real_step, calls = trainer.train_step, []

    def flaky_step(images, labels):  # batches 2 and 3 come back non-finite, not applied
        calls.append(1)
        if len(calls) in (2, 3):
            return tf.constant(np.nan), tf.constant(np.nan), tf.constant(False)
        return real_step(images, labels)

    trainer.train_step = flaky_step
    assert trainer.fit(train, val)["step"] == 4
    assert trainer.step == 4 and len(calls) == 6


def test_same_seed_gives_identical_losses(tmp_path, rng):
    train, val = npz_splits(tmp_path, rng)
    losses = []
    for run in ("a", "b"):
        cfg = tiny_config(1)
        cfg.data.batch_size = 2
        trainer = Trainer(cfg, str(tmp_path / run), (4, 4, 1))
        ds = data_lib.train_pipeline(train, 2, 100, seed=3)
        losses.append([float(trainer.train_step(x, y)[0]) for x, y in ds.take(5)])
    assert losses[0] == losses[1]


def test_weight_average_is_updated_checkpointed_and_swapped_in(tmp_path, batch):
    cfg = tiny_config(3)
    cfg.train.ema_decay = 0.5
    trainer = Trainer(cfg, str(tmp_path), (4, 4, 3))
    variables = trainer.model.trainable_variables
    expected = [v.numpy() for v in variables]
    for step in range(3):
        trainer.train_step(*batch)
        d = min(0.5, (1 + step + 1) / (10 + step + 1))
        expected = [d * e + (1 - d) * v.numpy() for e, v in zip(expected, variables)]
    for shadow, e in zip(trainer.average.shadows, expected):
        np.testing.assert_allclose(shadow.numpy(), e, rtol=1e-5, atol=1e-6)
    raw = [v.numpy() for v in variables]
    with trainer.inference_weights():
        np.testing.assert_allclose(variables[0].numpy(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(variables[0].numpy(), raw[0])  # restored afterwards
    trainer.save()
    restored = Trainer(cfg, str(tmp_path), (4, 4, 3))
    assert restored.restore()
    np.testing.assert_array_equal(restored.average.shadows[0].numpy(),
                                  trainer.average.shadows[0].numpy())


def test_weight_norm_is_initialised_from_data_once_at_step_0(tmp_path, rng):
    """model.weight_norm: g and the biases come from the first batch of a train.seed
    pipeline (the same batch on every start), the moving averages start from them, fit()
    does it on a fresh run and nothing does it once a step has been taken."""
    train, val = npz_splits(tmp_path, rng, n=16)
    cfg = tiny_config(1, type="pixelcnn_pp", output="logistic_mixture", num_mixtures=2,
                      hidden_dim=4, n_layers=1, weight_norm=True)
    cfg.train.ema_decay = 0.9
    cfg.train.steps = 0
    cfg.data.batch_size = 4
    cfg.sample.method = "naive"  # fit's samples: no sampler to compile (not checked here)

    def values(trainer):
        return [v.numpy() for v in trainer.model.trainable_variables]

    first = Trainer(cfg, str(tmp_path / "a"), (4, 4, 1))
    built = values(first)
    assert first.initialize_from_data(train)
    initialised = values(first)
    assert any(not np.array_equal(a, b) for a, b in zip(built, initialised))
    for shadow, value in zip(first.average.shadows, initialised):
        np.testing.assert_array_equal(shadow.numpy(), value)
    fresh = Trainer(cfg, str(tmp_path / "b"), (4, 4, 1))
    assert fresh.fit(train, val)["step"] == 0  # fit initialises a fresh run
    for a, b in zip(values(fresh), initialised):
        np.testing.assert_array_equal(a, b)  # from the same batch
    cfg.train.steps = 2
    assert first.fit(train, val)["step"] == 2
    trained = values(first)
    resumed = Trainer(cfg, str(tmp_path / "a"), (4, 4, 1))
    assert resumed.restore() and resumed.step == 2
    assert not resumed.initialize_from_data(train)
    for a, b in zip(values(resumed), trained):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precision,jit_compile", [("bfloat16", "false"), ("float16", "false"),
                                                   ("float16", "true")])
def test_mixed_precision_trains_close_to_float32(tmp_path, batch, precision, jit_compile):
    """(float16 compiled: its loss scale and skipped-step check inside the XLA step.)"""
    results = {}
    for name in ("none", precision):
        cfg = tiny_config(3)
        cfg.train.mixed_precision = name
        cfg.train.jit_compile = jit_compile
        cfg.train.learning_rate = 0.01
        trainer = Trainer(cfg, str(tmp_path / name), (4, 4, 3))
        assert all(v.dtype == tf.float32 for v in trainer.model.trainable_variables)
        for _ in range(10):
            loss, _, applied = trainer.train_step(*batch)
        logits = trainer.model(tf.cast(batch[0], tf.float32) / 255.0)
        assert logits.dtype == tf.float32
        results[name] = trainer.evaluate([batch]).bits_per_dim
    assert abs(results[precision] - results["none"]) < 0.05
    assert results["none"] < 8.0


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch):
    import collections
    import shutil
    trainer = Trainer(tiny_config(1), str(tmp_path), (4, 4, 1))
    trainer.check_disk_space()  # plenty of space here
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 2**20))
    with pytest.raises(ConfigError, match=r"has 1 MiB free but 3 checkpoints .* need about "
                                          r"\d+ MiB; free some space"):
        trainer.check_disk_space()


def test_float16_overflow_retries_are_bounded():
    """A finite loss with overflowing gradients is retried for free only while halving
    the loss scale can help; at the floor (1.0) it counts, so a run cannot skip forever."""
    from pixelcnn_tf.trainer import _BadSteps
    bad = _BadSteps(limit=3)
    assert "retried" in bad.skipped(1, 2.0, float("inf"), 2.0**14)
    assert bad.count == 0
    assert "skipped (1/3)" in bad.skipped(1, 2.0, float("inf"), 1.0)
    assert "skipped (2/3)" in bad.skipped(1, float("nan"), float("nan"), 2.0**10)
    with pytest.raises(TrainingError, match="non-finite for 3 batches"):
        bad.skipped(1, 2.0, float("inf"), 1.0)
    bad.reset()
    assert "skipped (1/3)" in bad.skipped(5, float("nan"), 1.0, None)  # float32 run


def test_compiled_step_equals_the_plain_one_and_resumes_across_the_setting(tmp_path, batch):
    """train.jit_compile=true: the whole step (loss, gradients, Adam, the moving average)
    compiled by XLA gives the plain step's losses and weights; a run saved with one
    setting resumes with the other."""
    from pixelcnn_tf.workdir import check_resume_training
    trainers = {}
    for setting in ("false", "true"):
        cfg = tiny_config(3)
        cfg.train.jit_compile, cfg.train.ema_decay = setting, 0.9
        trainers[setting] = Trainer(cfg, str(tmp_path / setting), (4, 4, 3))
        os.makedirs(tmp_path / setting, exist_ok=True)
        save_config(cfg, str(tmp_path / setting / "config.yml"))
    assert trainers["true"].jit_compile and not trainers["false"].jit_compile
    losses = {k: [float(t.train_step(*batch)[0]) for _ in range(3)]
              for k, t in trainers.items()}
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-5)
    for got, want in zip(trainers["true"].model.trainable_variables,
                         trainers["false"].model.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    trainers["false"].save()
    resumed_cfg = tiny_config(3)
    resumed_cfg.train.jit_compile, resumed_cfg.train.ema_decay = "true", 0.9
    check_resume_training(str(tmp_path / "false"), resumed_cfg)  # not a model setting
    resumed = Trainer(resumed_cfg, str(tmp_path / "false"), (4, 4, 3))
    assert resumed.restore() and resumed.step == 3
    assert bool(resumed.train_step(*batch)[2]) and resumed.step == 4


def test_auto_compiles_on_gpus_only():
    from pixelcnn_tf.devices import use_jit_compile
    assert use_jit_compile("auto") == bool(tf.config.list_physical_devices("GPU"))
    assert use_jit_compile("true") and not use_jit_compile("false")
    cfg = load_config(None, ["train.jit_compile=true", "train.recompute=true"])
    assert cfg.train.jit_compile == "true" and cfg.train.recompute is True
    with pytest.raises(ConfigError, match="train.jit_compile='xla' is not allowed; "
                                          "allowed values: auto, true, false"):
        load_config(None, ["train.jit_compile=xla"])


def test_recompute_trains_like_the_plain_step(tmp_path, rng):
    """train.recompute=true with dropout: the same losses and weights step for step (each
    recomputed block draws its dropout mask again from the same seed)."""
    images = tf.constant(rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8))
    labels = tf.zeros([2], tf.int32)
    trainers = []
    for recompute in (False, True):
        cfg = tiny_config(3, **PP_WITH_DROPOUT)
        cfg.train.recompute = recompute
        trainers.append(Trainer(cfg, str(tmp_path / str(recompute)), (8, 8, 3)))
    losses = [[float(t.train_step(images, labels)[0]) for _ in range(3)] for t in trainers]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for got, want in zip(trainers[1].model.trainable_variables,
                         trainers[0].model.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


def test_progress_figures_of_weights_and_average_reach_tensorboard(tmp_path, rng):
    """train.progress_every: held-out bits/dim of the raw weights and of the moving
    average on the first train.progress_images validation images, read back by
    TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator
    train, val = npz_splits(tmp_path, rng)
    cfg = tiny_config(1)
    for key, value in dict(steps=4, progress_every=2, progress_images=3, ema_decay=0.9,
                           eval_every=1000, sample_every=1000, log_every=1000).items():
        setattr(cfg.train, key, value)
    cfg.data.batch_size, cfg.data.eval_batch_size = 2, 2
    trainer = Trainer(cfg, str(tmp_path / "run"), (4, 4, 1))
    result = trainer.fit(train, val)
    progress = result["progress"]
    assert set(progress) == {"weights_bits_per_dim", "average_bits_per_dim"}
    assert progress["weights_bits_per_dim"] != progress["average_bits_per_dim"]
    subset = data_lib.eval_pipeline(val, 2).unbatch().take(3).batch(3)
    assert progress["weights_bits_per_dim"] == pytest.approx(
        trainer.evaluate(subset).bits_per_dim, rel=1e-5)
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "validation"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    for tag in ("progress/weights_bits_per_dim", "progress/average_bits_per_dim"):
        assert [e.step for e in events.Tensors(tag)] == [2, 4]
