"""Project-wide rules: the import layering, every config file loads, every subcommand has --help."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must never import
FORBIDDEN = {"drivers": {"perception"}, "calibration": {"drivers", "perception"}}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_layers(package):
    offenders = []
    for py in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(py) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{py.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "layering broken:\n" + "\n".join(offenders)


def _config_loaders():
    """File-name prefix -> function that loads and validates that kind of config."""
    from calibration.rig import Rig
    from calibration.yamlconf import load_yaml_file
    from drivers.bags import BagTopicMap
    from drivers.sim import SimConfig
    from perception.pipeline import PipelineConfig
    from perception.sync import SyncConfig
    from perception.train import TrainConfig
    from perception.train_siren import load_siren_train_config

    return {
        "rig_": Rig.load,
        "sim_": lambda p: load_yaml_file(SimConfig, p),
        "bag_topics": BagTopicMap.load,
        "sync_": SyncConfig.load,
        "train_siren": load_siren_train_config,
        "train_": TrainConfig.load,
        "pipeline_": PipelineConfig.load,
    }


def test_every_config_file_loads_with_its_schema():
    loaders = _config_loaders()
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files, "configs/ holds no YAML files"
    unmatched = []
    for f in files:
        loader = next((fn for prefix, fn in loaders.items() if f.name.startswith(prefix)), None)
        if loader is None:
            unmatched.append(f.name)
            continue
        assert loader(f) is not None
    assert not unmatched, f"config files with no loader in this test: {unmatched}"


def test_every_subcommand_has_help():
    from perception.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"simulate", "info"} <= set(sub.choices)
    for name in sub.choices:
        out = subprocess.run([sys.executable, "-m", "perception.cli", name, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "usage: perception " + name in out.stdout


def test_cli_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.mcap"
    out = subprocess.run([sys.executable, "-m", "perception.cli", "info", str(missing)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "nope.mcap" in lines[0]
