import os

import pytest
import yaml

from pixelcnn_tf.config import (ConfigError, check_model_fits_images, load_config,
                                save_config)


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("data:\n  dataset: mnist5k\n  batch_size: 8\nmodel:\n  n_layers: 3\n")
    cfg = load_config(str(path), ["train.steps=42", "train.learning_rate=1e-4",
                                  "data.batch_size=4", "data.data_dir=null"])
    assert cfg.data.batch_size == 4 and cfg.model.n_layers == 3
    assert cfg.train.steps == 42 and cfg.train.learning_rate == pytest.approx(1e-4)
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.model.type == "pixelcnn" and cfg.sample.method == "fast"


def test_round_trip_is_plain_yaml(tmp_path):
    cfg = load_config("configs/quickstart.yml", ["train.steps=7"])
    out = tmp_path / "saved.yml"
    save_config(cfg, str(out))
    text = out.read_text()
    assert "!!python" not in text
    assert yaml.safe_load(text)["train"]["steps"] == 7
    assert load_config(str(out)) == cfg


@pytest.mark.parametrize("overrides,message", [
    (["model.typ=pixelcnn"], "unknown config key 'model.typ'; allowed keys in 'model': type, "
                             "hidden_dim, out_dim"),
    (["modle.type=pixelcnn"], "unknown config section 'modle'"),
    (["model.type=transformer"], "model.type='transformer' is not allowed; allowed values: "
                                 "diagonal_bilstm, gated_pixelcnn, parallel_multiscale, "
                                 "pixelcnn, pixelcnn_pp, pixelsnail, row_lstm"),
    (["data.dataset=imagenet"], "data.dataset='imagenet' is not allowed; allowed values: "
                                "cifar10, mnist, fashion_mnist, mnist5k, npz"),
    (["data.batch_size=0"], "data.batch_size=0 is out of range: it must be >= 1"),
    (["data.batch_size=big"], "data.batch_size='big' has the wrong type: expected int"),
    (["data.batch_size=true"], "data.batch_size=True has the wrong type: expected int"),
    (["train.learning_rate=0"], "train.learning_rate=0.0 is out of range: it must be > 0"),
    (["train.lr_decay_rate=1.5"], "train.lr_decay_rate=1.5 is out of range: it must be <= 1"),
    (["model.kernel_size=4"], "model.kernel_size=4 must be odd"),
    (["sample.method=fastest"],
     "sample.method='fastest' is not allowed; allowed values: naive, fast"),
    (["train.steps"], "must look like section.key=value"),
    (["steps=3"], "must be section.key"),
    (["data.dataset=npz"], "data.path must name an .npz file"),
    (["model.dilations=[1, 2]"], "model.dilations=[1, 2] must give one rate per pixel layer: "
                                 "model.n_layers=5, got 2 rates"),
    (["model.dilations=[1, 2, 0, 1, 1]"], "every rate must be an integer from 1 to 1024, got 0"),
    (["model.dilations=[1, 2, 1.5, 1, 1]"], "every rate must be an integer from 1 to 1024, got 1.5"),
    (["model.dilations=[1, 2, true, 1, 1]"], "got True"),
    (["model.dilations=2"], "model.dilations=2 has the wrong type: expected list"),
    (["model.dilations=[1, 2, 1, 1, 1]", "model.type=row_lstm"],
     "model.dilations=[1, 2, 1, 1, 1] is not an option of model.type=row_lstm (used by "
     "gated_pixelcnn, pixelcnn); remove it (or --set model.dilations=null)"),
    (["model.type=pixelcnn_pp", "model.kernel_size=5"],
     "model.kernel_size=5 is not an option of model.type=pixelcnn_pp"),
    (["model.type=pixelcnn_pp", "model.out_dim=32"],
     "model.out_dim=32 is not an option of model.type=pixelcnn_pp"),
    (["model.type=diagonal_bilstm", "model.kernel_size=5"],
     "model.kernel_size=5 is not an option of model.type=diagonal_bilstm"),
    (["model.type=pixelcnn_pp", "model.multiscale={factor: 2}"],
     "model.multiscale={'factor': 2} is not an option of model.type=pixelcnn_pp"),
])
def test_errors_name_the_key_and_allowed_values(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(bad))
    bad.write_text("data: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_rgb_widths_must_split_into_colours():
    cfg = load_config(None, ["model.hidden_dim=128"])
    check_model_fits_images(cfg.model, (28, 28, 1))
    with pytest.raises(ConfigError, match="model.hidden_dim=128 must be divisible by 3 for "
                                          "RGB images.*try 126 or 129"):
        check_model_fits_images(cfg.model, (32, 32, 3))


def test_shipped_configs_load():
    import glob
    assert load_config("config.yml").data.dataset == "cifar10"
    assert load_config("configs/quickstart.yml").data.dataset == "mnist5k"
    for layer_type in ("gated_pixelcnn", "row_lstm", "diagonal_bilstm", "pixelcnn_pp",
                       "pixelsnail"):
        assert load_config(f"configs/cifar10_{layer_type}.yml").model.type == layer_type
    for path in glob.glob("configs/*.yml"):
        cfg = load_config(path)
        if cfg.data.dataset == "cifar10":
            check_model_fits_images(cfg.model, (32, 32, 3))
        # A variant says what differs: a base, and fewer lines than the base's complete file.
        if os.path.basename(path) not in ("quickstart.yml", "cifar10_pixelcnn_pp.yml"):
            raw = yaml.safe_load(open(path))
            assert "base" in raw, path


def test_a_config_says_what_differs_from_its_base(tmp_path):
    (tmp_path / "base.yml").write_text("data: {batch_size: 8}\nmodel: {type: gated_pixelcnn, "
                                       "hidden_dim: 6, multiscale: {factor: 2}}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "variant.yml").write_text(
        "base: ../base.yml\nmodel: {hidden_dim: 9, multiscale: null}\ntrain: {steps: 3}\n")
    cfg = load_config(str(tmp_path / "sub" / "variant.yml"), ["data.batch_size=4"])
    assert (cfg.data.batch_size, cfg.model.type, cfg.model.hidden_dim, cfg.model.multiscale,
            cfg.train.steps) == (4, "gated_pixelcnn", 9, None, 3)
    (tmp_path / "loop.yml").write_text("base: loop.yml\n")
    with pytest.raises(ConfigError, match="base: loop.yml leads back to itself"):
        load_config(str(tmp_path / "loop.yml"))
    (tmp_path / "missing.yml").write_text("base: nowhere.yml\n")
    with pytest.raises(ConfigError, match="nowhere.yml does not exist"):
        load_config(str(tmp_path / "missing.yml"))
    (tmp_path / "bad.yml").write_text("base: [1, 2]\n")
    with pytest.raises(ConfigError, match="base=\\[1, 2\\] must name another config file"):
        load_config(str(tmp_path / "bad.yml"))


@pytest.mark.parametrize("overrides,message", [
    (["train.seed=-1"], "train.seed=-1 is out of range: it must be >= 0"),
    (["sample.seed=100000000000000000000"], "sample.seed=100000000000000000000 is out of "
                                            "range: it must be <= 9223372036854775807"),
    (["data.path=x.png"], "data.path='x.png' is only read when data.dataset=npz"),
])
def test_seed_range_and_path_without_npz(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_npz_path_override_selects_the_npz_dataset():
    assert load_config(None, ["data.path=digits.npz"]).data.dataset == "npz"
    with pytest.raises(ConfigError, match="only read when data.dataset=npz"):
        load_config(None, ["data.path=digits.npz", "data.dataset=mnist5k"])


def alias_bomb(levels):
    """The "billion laughs" document: each level repeats the one before nine times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel:\n  type: *l{levels - 1}\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_alias_bombs_are_refused_without_expanding_them(tmp_path, levels):
    import resource
    path = tmp_path / "bomb.yml"
    path.write_text(alias_bomb(levels))
    assert len(path.read_text()) < 600
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="expands to more than 10,000 YAML nodes") as err:
        load_config(str(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # < 50 MB
    assert len(str(err.value)) < 300


def test_modest_aliases_still_load(tmp_path):
    path = tmp_path / "anchors.yml"
    path.write_text("train:\n  steps: &n 40\n  eval_every: *n\n  checkpoint_every: *n\n")
    cfg = load_config(str(path))
    assert cfg.train.eval_every == cfg.train.checkpoint_every == 40


def test_error_messages_cap_the_values_they_quote():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.type=" + "x" * 10_000])
    assert len(str(err.value)) < 300 and "..." in str(err.value)


@pytest.mark.parametrize("content,message", [
    (None, "is a directory"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "is not a text file"),
    (b"model: 5\n", "section 'model' must be a mapping of keys to values, got 5"),
])
def test_unusable_config_files(tmp_path, content, message):
    path = tmp_path / "c.yml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_grey_models_whose_input_kernel_sees_nothing_are_refused():
    cfg = load_config(None, ["model.input_kernel_size=1", "model.out_dim=63"])
    check_model_fits_images(cfg.model, (32, 32, 3))  # G sees R, B sees R and G: fine
    with pytest.raises(ConfigError, match="input_kernel_size=1 gives a mask-A input kernel"):
        check_model_fits_images(cfg.model, (28, 28, 1))
    mixture = load_config(None, ["model.input_kernel_size=1", "model.output=logistic_mixture"])
    with pytest.raises(ConfigError, match="sees no earlier pixel"):
        check_model_fits_images(mixture.model, (32, 32, 3))  # one colour group: nothing


@pytest.mark.parametrize("overrides,message", [
    (["model.dropout=0.5"], "model.dropout=0.5 is not an option of model.type=pixelcnn "
                            "(used by pixelcnn_pp); remove it (or --set model.dropout=0.0)"),
    (["model.weight_norm=true"], "model.weight_norm=True is not an option of model.type="
                                 "pixelcnn (used by pixelcnn_pp); remove it (or --set "
                                 "model.weight_norm=False)"),
    (["model.output=softmax"], "model.output='softmax' is not allowed; allowed values: "
                               "categorical, logistic_mixture"),
    (["model.num_mixtures=0"], "model.num_mixtures=0 is out of range: it must be >= 1"),
    (["model.type=pixelcnn_pp", "model.output=logistic_mixture", "model.dropout=1"],
     "model.dropout=1.0 is out of range: it must be < 1.0"),
])
def test_output_distribution_and_pixelcnn_pp_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_mixture_models_need_no_widths_divisible_by_three():
    cfg = load_config(None, ["model.hidden_dim=16", "model.output=logistic_mixture"])
    check_model_fits_images(cfg.model, (32, 32, 3))
    pp = load_config("configs/cifar10_pixelcnn_pp.yml").model
    check_model_fits_images(pp, (32, 32, 3))
    check_model_fits_images(pp, (28, 28, 1))
    with pytest.raises(ConfigError, match="multiples of 4, got 30x32"):
        check_model_fits_images(pp, (30, 32, 3))


def test_pixelcnn_pp_takes_a_categorical_output_for_grey_images_only():
    pp = load_config(None, ["model.type=pixelcnn_pp"]).model  # output: categorical
    check_model_fits_images(pp, (28, 28, 1))  # a pixel is one sub-pixel: 256 logits
    with pytest.raises(ConfigError) as err:
        check_model_fits_images(pp, (32, 32, 3))
    assert str(err.value) == ("model.type=pixelcnn_pp predicts whole pixels (no colour masks): "
                              "a categorical output needs grey images, these have 3 channels; "
                              "add --set model.output=logistic_mixture")


def test_dilations_load_save_and_build(tmp_path):
    from pixelcnn_tf.models import build_model
    cfg = load_config(None, ["model.dilations=[1, 2, 4, 8, 1]", "model.type=gated_pixelcnn"])
    assert cfg.model.dilations == [1, 2, 4, 8, 1]
    save_config(cfg, str(tmp_path / "c.yml"))
    again = load_config(str(tmp_path / "c.yml"))
    assert again.model.dilations == [1, 2, 4, 8, 1]
    model = build_model(again.model, (8, 8, 1))
    assert [layer.dilation for layer in model.pixel_layers] == [1, 2, 4, 8, 1]
    assert load_config(None).model.dilations is None
