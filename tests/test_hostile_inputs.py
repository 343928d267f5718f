"""Hostile and careless inputs: each costs what the user asked for, fails with one line,
and loses nothing (real files on disk; the CLI probes run the real scripts)."""
import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest

from conftest import random_model
from pixelcnn_tf import codec, container
from pixelcnn_tf import data as data_lib
from pixelcnn_tf.config import MAX_CLASSES, MAX_SAMPLES, ConfigError, load_config
from pixelcnn_tf.data import DataError


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def bomb_png(height: int, width: int) -> bytes:
    """A valid PNG header declaring height x width grey pixels, with a few KB of zlib data
    that would inflate to all of them (a decompression bomb)."""
    raw = zlib.compressobj(9)
    data = raw.compress(b"\0" * min(height * (width + 1), 2**22)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (data_lib.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def test_a_png_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20000, 20000))
    with pytest.raises(DataError, match="is 20000x20000x1 but the model takes 28x28x1"):
        data_lib.load_image_files(str(path), (28, 28, 1))
    with pytest.raises(DataError, match="declares 20000x20000 pixels"):
        data_lib.load_image_files(str(path))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(bomb_png(28, 28))
    (folder / "b.png").write_bytes(bomb_png(20000, 20000))
    decoded = []
    original = data_lib._decode_png
    try:  # no PNG of the folder is decoded before every header is checked
        data_lib._decode_png = lambda *a: decoded.append(a) or original(*a)
        with pytest.raises(DataError, match="b.png is 20000x20000x1"):
            data_lib.load_image_files(str(folder), (28, 28, 1))
    finally:
        data_lib._decode_png = original
    assert decoded == []


def test_damaged_pngs_and_a_folder_named_like_a_png(tmp_path, rng):
    good = tmp_path / "good.png"
    data_lib.save_image_files(str(tmp_path / "out"), rng.integers(0, 256, (1, 4, 4, 1))
                              .astype(np.uint8), names=["good.png"])
    good.write_bytes((tmp_path / "out" / "good.png").read_bytes())
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cut.png is damaged or not a PNG \(") as e:
        data_lib.load_image_files(str(truncated))
    assert "Op:" not in str(e.value) and "\n" not in str(e.value)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "x.png").mkdir()  # a sub-folder named like a PNG is not an image
    (folder / "a.png").write_bytes(good.read_bytes())
    images, _, names = data_lib.load_image_files(str(folder))
    assert names == ["a.png"] and images.shape == (1, 4, 4, 1)


def test_case_colliding_or_repeated_names_are_refused_before_anything_is_written(tmp_path, rng):
    images = rng.integers(0, 256, (4, 4, 4, 1)).astype(np.uint8)
    out = tmp_path / "out"
    for names, message in ((["a.png", "a.png", "b.png", "b.png"], "'a.png' twice"),
                           (["A.png", "a.png", "b.png", "c.png"], "differ only in case"),
                           (["a\0.png", "b.png", "c.png", "d.png"], "plain .png file names")):
        with pytest.raises(DataError, match=message):
            data_lib.save_image_files(str(out), images, names=names)
        assert not out.exists()
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("A.png", "a.png"):
        data_lib.save_image_files(str(folder), images[:1], names=[name], overwrite=True)
    if len(os.listdir(folder)) == 2:  # a case-sensitive file system
        with pytest.raises(DataError, match="differ only in case"):
            data_lib.load_image_files(str(folder))


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_an_npz_bomb_in_an_unused_key_is_never_read(tmp_path, rng):
    """Only 'images' and 'labels' are read, each checked from its header first."""
    path = tmp_path / "bomb.npz"
    images = rng.integers(0, 256, (8, 4, 4)).astype(np.uint8)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", npy(images))
        header = io.BytesIO()  # 512 MiB of zeros, declared and compressed
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (2**29,)})
        with z.open("unused.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for _ in range(2**29 // 2**24):
                member.write(b"\0" * 2**24)
    assert path.stat().st_size < 4 * 2**20
    got, labels = data_lib.load_npz_images(str(path))
    np.testing.assert_array_equal(got[..., 0], images)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("array,message", [
    (np.array(["a", "b"]), "holds <U1 values"),
    (np.zeros((2, 4, 4), "datetime64[s]"), "holds datetime64"),
    (np.zeros((2, 4, 4), np.complex64), "holds complex64 values"),
    (np.zeros((10, 0, 28, 1), np.uint8), r"N, H, W > 0, got shape \(10, 0, 28, 1\)"),
])
def test_npz_images_of_the_wrong_kind_are_one_line_errors(tmp_path, array, message):
    path = tmp_path / "x.npz"
    path.write_bytes(npz_bytes(images=array))
    with pytest.raises(DataError, match=message):
        data_lib.load_npz_images(str(path))


def test_an_npz_declaring_a_huge_or_foreign_shape_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (2**22, 32, 32, 3)})
        z.writestr("images.npy", header.getvalue())  # no data at all
    with pytest.raises(DataError, match=r"12.0 GiB\), over the 4 GiB"):
        data_lib.load_npz_images(str(path))
    small = tmp_path / "small.npz"
    small.write_bytes(npz_bytes(images=np.zeros((3, 5, 5), np.uint8)))
    with pytest.raises(DataError, match="images are 5x5x1 but the model takes 28x28x1"):
        data_lib.load_image_files(str(small), (28, 28, 1))


def test_a_file_cannot_claim_more_images_than_its_payload_can_hold():
    """63 bytes declaring 200,000 images: refused at once, not decoded for half an hour."""
    model = random_model(1, shape=(28, 28))
    data = codec.encode(model, np.zeros((1, 28, 28, 1), np.uint8))
    header = codec.read_header(data)
    for count in (200_000, 2**32 - 1):
        forged = container.pack(container.Header(**{**vars(header), "count": count,
                                             "payload": np.zeros(0, np.uint32)}))
        assert len(forged) == 63
        with pytest.raises(codec.CodecError, match=f"claims {count:,} images"):
            codec.read_header(forged)


def test_decoding_stops_where_the_payload_runs_out(rng):
    model = random_model(1)
    images = rng.integers(0, 256, (9, 5, 4, 1)).astype(np.uint8)
    data = codec.encode(model, images, batch_size=3)
    header = codec.read_header(data)
    short = container.pack(container.Header(**{**vars(header), "payload": header.payload[:2],
                                        "count": 9}))
    with pytest.raises(codec.CodecError, match="payload runs out before the images"):
        codec.decode(model, short)


def test_limits_of_counts_are_checked_where_they_enter():
    for key, limit in (("sample.n_images", MAX_SAMPLES), ("model.num_classes", MAX_CLASSES)):
        load_config(None, [f"{key}={limit}"])
        with pytest.raises(ConfigError, match=f"must be <= {limit}"):
            load_config(None, [f"{key}={limit + 1}"])
    with pytest.raises(ConfigError, match="must be <= 65536"):
        load_config(None, ["model.num_classes=1000000000000"])


@pytest.mark.parametrize("env,message", [
    ({"PIXELCNN_TF_CPU_DEVICES": "abc"}, "PIXELCNN_TF_CPU_DEVICES='abc' must be a number"),
    ({"PIXELCNN_TF_DOWNLOAD_PROBE": "nocolon"}, "must be host:port"),
])
def test_bad_environment_values_are_one_line_errors(tmp_path, env, message):
    from helpers import run
    result = run("train.py", "--config", "config.yml", "--workdir", str(tmp_path / "w"),
                 env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["not json", '{"cluster": {"worker": ["a:1"]}, "task": '
                                              '{"type": "worker", "index": 3}}'])
def test_a_bad_tf_config_is_a_one_line_error(text):
    from pixelcnn_tf.devices import check_tf_config
    with pytest.raises(ConfigError, match="is not a valid cluster description"):
        check_tf_config(text)
    check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": '
                    '{"type": "worker", "index": 1}}')
