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
    assert cfg.model.type == "pixelcnn" and cfg.sample.method == "naive"


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
                             "hidden_dim"),
    (["modle.type=pixelcnn"], "unknown config section 'modle'"),
    (["model.type=transformer"], "model.type='transformer' is not allowed; allowed values: "
                                 "diagonal_bilstm, gated_pixelcnn, pixelcnn, row_lstm"),
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
    for layer_type in ("gated_pixelcnn", "row_lstm", "diagonal_bilstm"):
        assert load_config(f"configs/cifar10_{layer_type}.yml").model.type == layer_type
    for path in glob.glob("configs/*.yml"):
        cfg = load_config(path)
        if cfg.data.dataset == "cifar10":
            check_model_fits_images(cfg.model, (32, 32, 3))
