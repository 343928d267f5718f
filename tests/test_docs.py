"""What the docs state is what the code does: the configuration key table against the
config dataclasses, and the README's mask snippet as written."""
import dataclasses
import os
import re

import yaml

from conftest import ROOT
from pixelcnn_tf import config as config_lib


def documented_keys():
    """{key: the default cell} of the table in docs/configuration.md; a row may name
    several keys (`a`, `b`) with as many defaults."""
    text = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| (`[a-z_]+\.[a-z_]+`(?:, `[a-z_]+\.[a-z_]+`)*) \|\s*([^|]*?)\s*\|", line)
        if match:
            keys = re.findall(r"`([a-z_.]+)`", match.group(1))
            defaults = [d.strip() for d in match.group(2).split(",")]
            if len(defaults) != len(keys):
                defaults = [match.group(2).strip()] * len(keys)
            for key, default in zip(keys, defaults):
                assert key not in rows, f"{key} is documented twice"
                rows[key] = default
    return rows


def test_the_configuration_table_matches_the_dataclasses():
    documented = documented_keys()
    actual = {}
    for section in dataclasses.fields(config_lib.Config):
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                    getattr(config_lib, section.type)):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            actual[f"{section.name}.{f.name}"] = default
    assert sorted(documented) == sorted(actual)
    for key, cell in documented.items():
        cell = cell.strip("`")
        if cell and cell != "TFDS default":  # (blank or a phrase: the default is None)
            assert yaml.safe_load(cell) == actual[key], key
        else:
            assert actual[key] is None, key


def test_the_readme_mask_snippet_runs_as_written(tmp_path, monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    snippet = next(code for code in re.findall(r"```python\n(.*?)```", readme, re.S)
                   if "get_mask" in code)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["mask"].shape == (5, 5, 3, 3)
    assert (tmp_path / "mask_a.png").stat().st_size > 0


def test_the_base_example_is_the_shipped_file():
    text = open(os.path.join(ROOT, "docs", "configuration.md")).read()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    shipped = open(os.path.join(ROOT, "configs", "quickstart_gated_pixelcnn.yml")).read()
    assert shipped.endswith(example)
