"""Packaging: one distribution, a `cambrian` console script, no folder importable under a stdlib name."""

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from cambrian.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_package_shadows_the_standard_library():
    tops = {name for name, dists in importlib.metadata.packages_distributions().items() if "cambrian" in dists}
    assert tops == {"cambrian"}
    assert not tops & set(sys.stdlib_module_names)


def test_operator_folder_is_cambrian_operator_and_stdlib_operator_is_intact():
    import cambrian.operator

    assert Path(cambrian.operator.__file__).parent == ROOT / "operator"
    # From the repository root, `import operator` is still the standard library's.
    proc = subprocess.run([sys.executable, "-c", "import operator, sys; print(operator.__file__)"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert "site-packages" not in proc.stdout and not proc.stdout.startswith(str(ROOT))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_cli_command_resolves_and_has_help(name):
    module_name, attr = COMMANDS[name][0].split(":")
    assert hasattr(importlib.import_module(module_name), attr), f"{COMMANDS[name][0]} is missing"
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", name, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_console_script_lists_commands_without_importing_heavy_modules():
    code = ("import sys; sys.argv=['cambrian','--help']\nfrom cambrian.cli import main\ntry:\n main()\n"
            "except SystemExit: pass\nprint('torch' in sys.modules, 'kopf' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().endswith("False False")
    for name in COMMANDS:
        assert name in proc.stdout


def test_unknown_command_and_bad_option_exit_2():
    assert subprocess.run([sys.executable, "-m", "cambrian.cli", "nope"], capture_output=True).returncode == 2
    assert subprocess.run([sys.executable, "-m", "cambrian.cli", "train", "--bogus"], capture_output=True).returncode == 2
