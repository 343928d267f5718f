"""Decompress a file written by compress.py, with the same run's model.

  python decompress.py --workdir runs/quick FILE -o OUT [--force]

OUT: a name ending in .npz (``images`` uint8 [N, H, W, C] in the order compressed, and
``labels`` when the file has them) or a folder of PNGs (the original names when the
input was PNGs, else 000000.png, 000001.png, ...). Existing files are replaced only with
--force.
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
    parser.add_argument("--workdir", required=True,
                        help="the run directory whose model compressed the file")
    parser.add_argument("file", help="a file written by compress.py")
    parser.add_argument("-o", "--output", required=True,
                        help="an .npz file or a folder for PNGs")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    cli.add_config_args(parser)
    args = parser.parse_args(argv)
    from pixelcnn_tf.container import read_header
    from pixelcnn_tf.errors import ConfigError
    from pixelcnn_tf.files import check_image_output
    if not os.path.isfile(args.file):
        raise ConfigError(f"{args.file} is not a file; give a file written by compress.py")
    with open(args.file, "rb") as f:
        data = f.read()
    # A damaged or foreign file, and where the images go (existing files, names that
    # repeat or collide in case, a location that is not writable), are refused at once:
    # before TensorFlow loads, let alone the model.
    header = read_header(data, args.file)
    check_image_output(args.output, header.count, header.names, args.force)
    cli.import_tensorflow_quietly()

    from pixelcnn_tf import codec
    from pixelcnn_tf import data as data_lib
    from pixelcnn_tf.run import load_for_inference

    run = load_for_inference(args.workdir, args.overrides)
    tried = []
    for step in run.checkpoints_newest_first():  # the checkpoint that compressed the file
        with run.inference_weights():  # the weights compress.py used
            if codec.fingerprint(run.model) != header.fingerprint:
                tried.append(step)
                continue
            if tried:
                print(f"decoding with ckpt-{step}, the checkpoint that compressed {args.file}")
            start = time.perf_counter()
            images = codec.decode(run.model, data, args.file)
            seconds = time.perf_counter() - start
            break
    else:
        raise codec.CodecError(
            f"{args.file} was compressed with another model: none of the checkpoints of "
            f"{args.workdir} (steps {', '.join(map(str, tried))}) wrote it; decompress with "
            f"the run, and keep the checkpoint (compress.py names it), that compressed it")
    written = data_lib.save_image_files(args.output,
                                        data_lib.to_intensities(images, header.bits),
                                        header.labels, header.names, overwrite=args.force)
    if header.labels is not None and not args.output.lower().endswith(".npz"):
        print(f"note: {args.file} holds labels, which PNGs cannot carry; decompress to an "
              f".npz to get them")
    print(f"decompressed {len(images)} images ({'x'.join(map(str, images.shape[1:]))}) "
          f"from {args.file} in {seconds:.1f} s ({len(images) / seconds:.1f} images/s); "
          f"wrote {written}")
    return 0


if __name__ == "__main__":
    cli.run(main)
