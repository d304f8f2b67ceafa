"""CLI conventions through the real entry point in subprocesses."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["tokenize-image", "tokenize-audio", "detok", "generate", "train", "chat", "tts", "asr", "caption",
            "t2i", "eval"]


def aromni(*args, input=None, env=None, cwd=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "aromni", *args], input=input, capture_output=True,
                          env=e, cwd=cwd or ROOT, timeout=120)


def test_help_lists_every_command():
    r = aromni("--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    for c in COMMANDS:
        assert re.search(rf"^\s+{c}\s", out, re.M), c
    assert r.stderr == b""


def test_version():
    r = aromni("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("aromni ")


def test_unknown_command_is_usage_error():
    r = aromni("no-such-command")
    assert r.returncode == 2
    assert r.stdout == b""
    assert b"no-such-command" in r.stderr


def test_unknown_option_is_usage_error():
    r = aromni("detok", "--no-such-option")
    assert r.returncode == 2
    assert b"Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd):
    r = aromni(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert b"Usage" in r.stdout


def test_namespace_has_no_generic_top_level_packages(tmp_path):
    # installing aromni must not put `core` or `commands` into site-packages
    for mod in ("core", "commands", "aromni_cli"):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=tmp_path, capture_output=True)
        assert r.returncode != 0, f"'{mod}' is importable as a top-level package"
    r = subprocess.run([sys.executable, "-c", "import aromni.core.model, aromni.commands, aromni.app"],
                       cwd=tmp_path, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_pyproject_lists_every_package():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    mapping = {"aromni_cli": "aromni", "core": "aromni.core", "commands": "aromni.commands"}
    for top, pkg in mapping.items():
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and d != "assets"]
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, top))
                name = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
                assert name in listed, f"{name} missing from pyproject packages"


def test_debug_flag_shows_traceback_only_when_asked(tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    r = aromni("detok", str(bad))
    assert r.returncode in (1, 2)
    assert b"Traceback" not in r.stderr
    assert len(r.stderr.decode().strip().splitlines()) == 1
