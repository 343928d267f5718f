"""Compress images losslessly with a trained model.

  python compress.py --workdir runs/quick IMAGES -o FILE [--batch-size 64] [--force]

IMAGES: an .npz (``images`` uint8 [N, H, W] or [N, H, W, C], optional ``labels``), one
PNG, or a folder of PNGs, of the model's image shape. Prints the file's size and its
bits/dim next to the model's own bits/dim on the same images. Decompress with
decompress.py and the same workdir (the file holds a fingerprint of the model).

A run of data.bits < 8 codes its levels: images already at that depth (for 1 bit: 0 and
255) come back byte for byte; others are refused unless --quantize says to code them
quantized (decompress.py then gives the quantized images).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

from pixelcnn_tf import cli


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run directory made by train.py")
    parser.add_argument("images", help="an .npz, a PNG or a folder of PNGs")
    parser.add_argument("-o", "--output", required=True, help="the compressed file to write")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images coded together (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--verify", action="store_true",
                        help="decode the file again and compare (twice the time)")
    parser.add_argument("--quantize", action="store_true",
                        help="code images at the run's data.bits even when that changes them")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    from pixelcnn_tf.errors import ConfigError
    if not 1 <= args.batch_size < 2**16:
        raise ConfigError(f"--batch-size {args.batch_size}: give 1..65535")
    if os.path.isdir(args.output):
        raise ConfigError(f"-o {args.output} is a directory; give a file name such as "
                          f"{os.path.join(args.output, 'images.pxz')}")
    if os.path.exists(args.output) and not args.force:
        raise ConfigError(f"{args.output} exists; choose another name or add --force")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"-o {args.output}: {parent} is not a writable folder; choose "
                          f"another output")
    cli.import_tensorflow_quietly()

    import numpy as np
    import tensorflow as tf
    from pixelcnn_tf import codec
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf.errors import DataError
    from pixelcnn_tf.run import load_for_inference
    from pixelcnn_tf.files import write_bytes_atomically

    run = load_for_inference(args.workdir, args.overrides)
    images, labels, names = data_lib.load_image_files(args.images, run.image_shape)
    if images.shape[1:] != tuple(run.image_shape):
        raise DataError(f"{args.images}: images are {'x'.join(map(str, images.shape[1:]))} "
                        f"but the model of {args.workdir} takes "
                        f"{'x'.join(map(str, run.image_shape))}")
    images = data_lib.levels_of_files(images, run.config.data, args.images, args.quantize)
    if run.conditional and labels is None:
        raise DataError(f"the model of {args.workdir} is class-conditional: give an .npz "
                        f"with a 'labels' array next to 'images'")
    with run.inference_weights():  # the moving averages when the run keeps them
        start = time.perf_counter()
        encoded = codec.encode_with_stats(run.model, images, labels, names=names,
                                          batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        model_bpd = run.evaluate(tf.data.Dataset.from_tensor_slices(
            (images, np.zeros(len(images), np.int32) if labels is None else
             labels.astype(np.int32))
        ).batch(args.batch_size)).bits_per_dim
        if args.verify:
            codec.decode(run.model, encoded.data, args.output)
    write_bytes_atomically(args.output, encoded.data)
    dims = images.size
    size = len(encoded.data)
    print(f"compressed {len(images)} images ({'x'.join(map(str, images.shape[1:]))}) into "
          f"{args.output}: {size:,} bytes = {8 * size / dims:.4f} bits/dim "
          f"({8 * encoded.payload_bytes / dims:.4f} coded + {size - encoded.payload_bytes:,} "
          f"bytes of header); the model's bits/dim on these images: {model_bpd:.4f}; "
          f"{len(images) / seconds:.1f} images/s{', verified' if args.verify else ''}")
    print(f"decompressing needs checkpoint ckpt-{run.step} of {args.workdir}: training on "
          f"rotates it away after {run.config.train.keep_checkpoints} newer checkpoints "
          f"(train.keep_checkpoints); copy it aside to keep the file decodable")
    return 0


if __name__ == "__main__":
    cli.run(main)
