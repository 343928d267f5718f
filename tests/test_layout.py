"""The package's layout rules: imports run one way with no cycles, the config is checked
before TensorFlow loads, every listed type is what the table says, and the walkthrough of
docs/adding_a_model_type.md builds a working type."""
import ast
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import ROOT, model_with_layer
from pixelcnn_tf import generate_images
from pixelcnn_tf.models import TYPES, model_types, type_module, type_options

PACKAGE = os.path.join(ROOT, "pixelcnn_tf")
# Each module's layer, lowest first: a module may import only from its own layer or
# lower ones (the entry points and tests sit above them all).
LAYERS = [
    {"errors", "files", "container", "cli", "devices", "likelihood", "nn.masks", "nn"},
    {"nn.layers", "nn.shifted", "nn.attention"},
    {"models.base"},
    {"models.pixel_rnn", "models.recurrent"},
    {"models.pixelcnn", "models.gated_pixelcnn", "models.row_lstm", "models.diagonal_bilstm",
     "models.pixelsnail", "models.pixelcnn_pp", "models.multiscale",
     "models.parallel_multiscale"},
    # The type table and build_model (no TensorFlow at import), and the config that
    # checks model.type against the table.
    {"models", "config"},
    {"data", "viz", "workdir", "sampling"},
    {"codec", "export", "run"},
    {"trainer"},
]


def import_graph():
    """{module: the package modules it imports} (module names relative to pixelcnn_tf,
    the package itself as ""), from every import statement, top-level or inside a
    function."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                modules[re.sub(r"\.?__init__$", "", rel)] = path
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            names = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pixelcnn_tf"):
                base = node.module[len("pixelcnn_tf."):] if "." in node.module else ""
                names = [f"{base}.{a.name}".lstrip(".") for a in node.names]
                names = [n if n in modules else base for n in names]
            elif isinstance(node, ast.Import):
                names = [a.name[len("pixelcnn_tf."):] for a in node.names
                         if a.name.startswith("pixelcnn_tf.")]
            targets.update(n for n in names if n in modules and n != module)
        graph[module] = targets
    return graph


def test_every_module_has_a_layer():
    listed = set().union(*LAYERS)
    assert set(import_graph()) - {""} == listed


def test_imports_run_one_way():
    """No module imports one of a higher layer (so there are no cycles either). The
    package root re-exports lazily and is not counted."""
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [(m, t) for m, targets in import_graph().items() if m
              for t in targets if t and level[t] > level[m]]
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for t in graph[todo.pop()] - {""}:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    assert [m for m in graph if m and m in reachable(m)] == []


def test_config_is_checked_before_tensorflow_loads():
    code = ("import sys\nfrom pixelcnn_tf.config import load_config\n"
            "load_config('configs/quickstart.yml', ['model.type=pixelcnn_pp'])\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_decompress_refuses_a_bad_file_or_output_before_tensorflow_loads(tmp_path):
    """A file that is not ours, and an output it must not overwrite, are one line at once."""
    from pixelcnn_tf.container import Header, pack
    good = tmp_path / "good.pxz"
    good.write_bytes(pack(Header((2, 2, 1), 1, 1, 8, bytes(16), bytes(16), None, None,
                                 np.zeros(2, np.uint32))))
    (tmp_path / "bad.pxz").write_bytes(b"not ours")
    (tmp_path / "taken.npz").write_bytes(b"keep me")
    code = ("import sys\nsys.argv[0] = 'decompress.py'\nimport decompress\n"
            "from pixelcnn_tf.errors import DataError\n"
            "for args in sys.argv[1:]:\n"
            "    try:\n        decompress.main(['--workdir', 'w', *args.split()])\n"
            "    except DataError as e:\n        print(e)\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    done = subprocess.run([sys.executable, "-c", code, f"{tmp_path}/bad.pxz -o x.npz",
                           f"{good} -o {tmp_path}/taken.npz"], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    first, second = done.stdout.splitlines()
    assert "is not a pixelcnn_tf compressed file" in first
    assert "taken.npz exists; choose another output or add --force" in second
    assert (tmp_path / "taken.npz").read_bytes() == b"keep me"


@pytest.mark.parametrize("name", model_types())
def test_each_type_is_what_the_table_says(name):
    module = type_module(name)
    options = type_options(name)
    if hasattr(module, "LAYER"):
        layer = module.LAYER
        assert layer.type_name == name and not hasattr(module, "build")
        assert layer.dilatable == ("dilations" in options)
        assert set(layer.OPTIONS) <= set(options)
        assert layer.Step is not None  # every listed pixel-layer type samples fast
    else:
        assert callable(module.build) and module.type_name == name
    assert TYPES[name][0] + ".py" in os.listdir(os.path.join(PACKAGE, "models"))


def test_the_walkthrough_for_a_new_type_works():
    """The code of docs/adding_a_model_type.md, as written: a causal layer whose fast
    sampler equals the naive one."""
    text = open(os.path.join(ROOT, "docs", "adding_a_model_type.md")).read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("my_type")
    exec(compile(code, "adding_a_model_type.md", "exec"), module.__dict__)
    for channels in (1, 3):
        model = model_with_layer(module.LAYER, channels, (4, 3), num_classes=2)
        fast = generate_images(model, (4, 3), 3, channels, seed=5, method="fast",
                               labels=[0, 1, 1])
        naive = generate_images(model, (4, 3), 3, channels, seed=5, method="naive",
                                labels=[0, 1, 1])
        np.testing.assert_array_equal(fast, naive)
