"""Every option of every command appears in its man page (regenerate with scripts/gen_man.py)."""
import os
import re

import pytest
import typer.main

from aromni.app import app

MAN = os.path.join(os.path.dirname(__file__), "..", "man")
group = typer.main.get_command(app)
ctx = group.context_class(group)


def _unescape(s: str) -> str:
    return s.replace("\\-", "-").replace("\\\\", "\\")


@pytest.mark.parametrize("name", group.list_commands(ctx))
def test_every_option_in_page(name):
    path = os.path.join(MAN, f"aromni-{name}.1")
    assert os.path.isfile(path), f"missing man page {path}; run scripts/gen_man.py"
    text = _unescape(open(path).read())
    cmd = group.get_command(ctx, name)
    for p in cmd.params:
        for opt in getattr(p, "opts", []) + list(getattr(p, "secondary_opts", [])):
            if opt.startswith("-"):
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), \
                    f"{opt} of 'aromni {name}' is not in {path}; run scripts/gen_man.py"


def test_option_values_are_named_as_help_names_them():
    text = _unescape(open(os.path.join(MAN, "aromni-tts.1")).read())
    assert ".B --chunk-words <int>" in text and ".B --output, -o <str>" in text
    for name in group.list_commands(ctx):
        assert "bound method" not in open(os.path.join(MAN, f"aromni-{name}.1")).read().lower(), name


def test_top_page_lists_commands():
    text = _unescape(open(os.path.join(MAN, "aromni.1")).read())
    for name in group.list_commands(ctx):
        assert f"aromni-{name}" in text
    assert "EXIT STATUS" in text
