import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pixelcnn_tf import data as data_lib
from pixelcnn_tf.config import load_config
from pixelcnn_tf.data import DataError, load_split


def test_mnist5k_split_is_deterministic_and_disjoint():
    cfg = load_config(None, ["data.dataset=mnist5k"]).data
    train, val = load_split(cfg, "train"), load_split(cfg, "validation")
    assert (train.num_examples, val.num_examples) == (4500, 500)
    assert train.image_shape == (28, 28, 1) and train.num_classes == 10
    x_train = np.stack([x for x, _ in train.dataset.as_numpy_iterator()])
    x_val, y_val = zip(*val.dataset.as_numpy_iterator())
    x_val = np.stack(x_val)
    assert x_train.dtype == np.uint8 and x_train.max() == 255  # 256 levels, not binarised
    assert len(np.unique(x_train)) > 200
    assert len(set(y_val)) == 10  # the sorted file was shuffled before splitting
    train_keys = {x.tobytes() for x in x_train}
    assert not any(x.tobytes() in train_keys for x in x_val)
    again = np.stack([x for x, _ in load_split(cfg, "validation").dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(again, x_val)
    with pytest.raises(DataError, match="mnist5k has no test split"):
        load_split(cfg, "test")


def write_npz(path, images, **extra):
    np.savez(path, images=images, **extra)
    return str(path)


def npz_config(path, *more):
    return load_config(None, ["data.dataset=npz", f"data.path={path}",
                              "data.validation_size=2", *more]).data


def test_npz_grey_and_rgb(tmp_path, rng):
    grey = write_npz(tmp_path / "g.npz", rng.integers(0, 256, (10, 5, 6)).astype(np.uint8))
    split = load_split(npz_config(grey), "all")
    assert split.num_examples == 10 and split.image_shape == (5, 6, 1) and split.num_classes == 0
    assert load_split(npz_config(grey), "train").num_examples == 8
    assert load_split(npz_config(grey), "validation").num_examples == 2
    rgb = write_npz(tmp_path / "c.npz", rng.integers(0, 256, (4, 5, 6, 3)).astype(np.uint8),
                    labels=np.array([0, 1, 2, 1]))
    split = load_split(npz_config(rgb), "all")
    assert split.image_shape == (5, 6, 3) and split.num_classes == 3
    assert [int(y) for _, y in split.dataset.as_numpy_iterator()] == [0, 1, 2, 1]


@pytest.mark.parametrize("images,extra,message", [
    (np.zeros((3, 4, 4, 2), np.uint8), {}, r"images must be \[N, H, W\] or \[N, H, W, C\]"),
    (np.zeros((3, 4), np.uint8), {}, r"images must be \[N, H, W\]"),
    (np.zeros((3, 4, 4), np.float32), {}, "must be uint8 intensities 0..255, got dtype float32"),
    (np.full((3, 4, 4), 300, np.int32), {}, "outside 0..255"),
    (np.zeros((3, 4, 4), np.uint8), {"labels": np.zeros(2, np.int64)}, "labels must be 3"),
])
def test_npz_errors(tmp_path, images, extra, message):
    path = write_npz(tmp_path / "bad.npz", images, **extra)
    with pytest.raises(DataError, match=message):
        load_split(npz_config(path), "all")


def test_npz_missing_file_and_key(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(npz_config(tmp_path / "nope.npz"), "all")
    np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"has no 'images' array \(it has: pixels\)"):
        load_split(npz_config(tmp_path / "x.npz"), "all")


@pytest.mark.parametrize("name,shape,classes", [("cifar10", (32, 32, 3), 10),
                                                ("mnist", (28, 28, 1), 10),
                                                ("fashion_mnist", (28, 28, 1), 10)])
def test_tfds_loading_with_mock_data(monkeypatch, name, shape, classes):
    monkeypatch.setattr(data_lib, "check_tfds_download", lambda *a: None)
    cfg = load_config(None, [f"data.dataset={name}", "data.validation_size=5"]).data
    with tfds.testing.mock_data(num_examples=12):
        for split_name in ("train", "validation", "test"):
            split = load_split(cfg, split_name)
            assert split.image_shape == shape and split.num_classes == classes
            x, y = next(iter(split.dataset))
            assert x.dtype == tf.uint8 and x.shape == shape and y.dtype == tf.int32
            batches = list(data_lib.eval_pipeline(split, 5))
            assert sum(len(b[0]) for b in batches) == split.num_examples


def test_offline_download_fails_at_the_probe_with_advice(monkeypatch, tmp_path):
    # A closed port on this machine: refused at once, as an unreachable host would be.
    monkeypatch.setenv(data_lib.PROBE_ENV, "127.0.0.1:9")
    cfg = load_config(None, ["data.dataset=cifar10", f"data.data_dir={tmp_path}"]).data
    with pytest.raises(DataError) as err:
        load_split(cfg, "train")
    message = str(err.value)
    assert "TFDS could not download cifar10" in message
    assert "configs/quickstart.yml" in message and "data.dataset=npz" in message


def test_prepared_tfds_data_skips_the_probe(monkeypatch, tmp_path):
    monkeypatch.setenv(data_lib.PROBE_ENV, "127.0.0.1:9")
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)  # what a prepared dataset has
    data_lib.check_tfds_download("mnist", str(tmp_path))  # no error: nothing to download


def test_train_pipeline_batches_forever(tmp_path, rng):
    path = write_npz(tmp_path / "g.npz", rng.integers(0, 256, (10, 3, 3)).astype(np.uint8))
    split = load_split(npz_config(path), "train")
    ds = data_lib.train_pipeline(split, 3, 100, seed=1)
    batches = list(ds.take(5))  # 15 images from 8: it repeats
    assert all(b[0].shape == (3, 3, 3, 1) for b in batches)
    again = list(data_lib.train_pipeline(split, 3, 100, seed=1).take(5))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(DataError, match="larger than the 8 training images"):
        data_lib.train_pipeline(split, 9, 100, seed=1)


@pytest.mark.parametrize("cache_mb", [1, 0])
def test_train_pipeline_caches_decoded_images_when_they_fit(cache_mb):
    reads = []

    def images():  # stands in for reading and decoding files; counts the passes
        reads.append(1)
        for i in range(6):
            yield np.full((2, 2, 1), i, np.uint8), np.int32(0)

    spec = (tf.TensorSpec([2, 2, 1], tf.uint8), tf.TensorSpec([], tf.int32))
    split = data_lib.Split(tf.data.Dataset.from_generator(images, output_signature=spec),
                           6, (2, 2, 1), 0, "train")
    assert data_lib.decoded_mb(split) == 24 / 2**20
    ds = data_lib.train_pipeline(split, 3, 6, seed=0, cache_mb=cache_mb)
    batches = list(ds.take(6))  # three epochs
    if cache_mb:
        assert len(reads) == 1  # read once, then served from memory
    else:
        assert len(reads) >= 3  # read again every epoch (prefetching may read ahead)
    seen = np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in batches])
    assert sorted(seen[:6]) == list(range(6))  # every image once per epoch either way


# -- image files (compress.py / decompress.py) -------------------------------------------------
def write_png(path, image, **kwargs):
    path.write_bytes(tf.io.encode_png(image, **kwargs).numpy())


@pytest.mark.parametrize("channels", [1, 3])
def test_png_folder_round_trip(tmp_path, rng, channels):
    images = rng.integers(0, 256, (3, 5, 4, channels)).astype(np.uint8)
    names = ["b.png", "a.png", "c.PNG"]
    written = data_lib.save_image_files(str(tmp_path / "out"), images, names=names)
    assert written == f"3 PNGs in {tmp_path / 'out'}"
    (tmp_path / "out" / "notes.txt").write_text("not an image")
    loaded, labels, got_names = data_lib.load_image_files(str(tmp_path / "out"))
    assert got_names == ["a.png", "b.png", "c.PNG"] and labels is None  # sorted by name
    np.testing.assert_array_equal(loaded, images[[1, 0, 2]])
    one, _, one_name = data_lib.load_image_files(str(tmp_path / "out" / "b.png"))
    np.testing.assert_array_equal(one, images[:1])
    assert one_name == ["b.png"]


def test_npz_output_with_labels_and_no_silent_overwrite(tmp_path, rng):
    images = rng.integers(0, 256, (2, 3, 3, 1)).astype(np.uint8)
    path = str(tmp_path / "x.npz")
    data_lib.save_image_files(path, images, labels=np.array([3, 1], np.int32))
    before = open(path, "rb").read()
    with pytest.raises(DataError, match="exists; choose another output or add --force"):
        data_lib.save_image_files(path, images[::-1])
    assert open(path, "rb").read() == before  # untouched, byte for byte
    data_lib.save_image_files(path, images[::-1], overwrite=True)
    loaded, labels, names = data_lib.load_image_files(path)
    np.testing.assert_array_equal(loaded, images[::-1])
    assert labels is None and names is None


def test_png_folder_refuses_to_overwrite_and_bad_names(tmp_path, rng):
    images = rng.integers(0, 256, (2, 3, 3, 1)).astype(np.uint8)
    folder = tmp_path / "pngs"
    data_lib.save_image_files(str(folder), images)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DataError, match="already holds 000000.png and 1 more"):
        data_lib.save_image_files(str(folder), images[::-1])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for name in ("../evil.png", "sub/x.png", "x.txt"):
        with pytest.raises(DataError, match="plain .png file names"):
            data_lib.save_image_files(str(tmp_path / "o"), images[:1], names=[name])
    assert not (tmp_path / "evil.png").exists()


def test_png_errors(tmp_path, rng):
    folder = tmp_path / "f"
    folder.mkdir()
    with pytest.raises(DataError, match="holds no .png files"):
        data_lib.load_image_files(str(folder))
    write_png(folder / "a.png", rng.integers(0, 256, (4, 4, 1)).astype(np.uint8))
    write_png(folder / "b.png", rng.integers(0, 256, (4, 5, 1)).astype(np.uint8))
    with pytest.raises(DataError, match="different shapes .a.png is 4x4x1, b.png is 4x5x1"):
        data_lib.load_image_files(str(folder))
    deep = tmp_path / "deep.png"
    write_png(deep, rng.integers(0, 65536, (4, 4, 1)).astype(np.uint16))
    with pytest.raises(DataError, match="16 bits per sample"):
        data_lib.load_image_files(str(deep))
    alpha = tmp_path / "alpha.png"
    write_png(alpha, rng.integers(0, 256, (4, 4, 4)).astype(np.uint8))
    with pytest.raises(DataError, match="alpha channel"):
        data_lib.load_image_files(str(alpha))
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"hello")
    with pytest.raises(DataError, match="is not a PNG file"):
        data_lib.load_image_files(str(fake))
    with pytest.raises(DataError, match="does not exist"):
        data_lib.load_image_files(str(tmp_path / "missing.png"))
