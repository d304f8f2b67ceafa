"""core/threads.py: the thread count's precedence, refusal of bad counts, and ``--threads`` / ``$AROMNI_THREADS``
honoured by the commands."""
from __future__ import annotations

import pytest

from aromni.core.errors import AromniError
from aromni.core.threads import DEFAULT_THREADS, ENV, cores, cpu_name, resolve_threads


def test_precedence_option_then_env_then_omp_then_default():
    assert resolve_threads(3, {ENV: "2", "OMP_NUM_THREADS": "4"}) == 3
    assert resolve_threads(None, {ENV: "2", "OMP_NUM_THREADS": "4"}) == 2
    assert resolve_threads(None, {"OMP_NUM_THREADS": "4"}) == 4
    assert resolve_threads(None, {}) == DEFAULT_THREADS
    assert resolve_threads(0, {}) == cores() == resolve_threads(None, {ENV: "0"})


@pytest.mark.parametrize("value", [-1, "x", "1.5"])
def test_bad_counts_are_refused(value):
    with pytest.raises(AromniError, match="threads|AROMNI_THREADS"):
        resolve_threads(value if isinstance(value, int) else None, {} if isinstance(value, int) else {ENV: value})


def test_commands_use_the_count_they_are_given(tiny_bundle, tmp_path):
    from test_cli import aromni

    base = ("tts", "hi", "-m", tiny_bundle, "--max-new-tokens", "4", "--seed", "0", "-o", str(tmp_path / "a.wav"))
    clean = {"OMP_NUM_THREADS": "", ENV: ""}
    for extra, env, want in ((("--threads", "2"), clean, "2 threads"), ((), clean, "1 thread)"),
                             ((), clean | {ENV: "2"}, "2 threads"), (("--threads", "1"), clean | {ENV: "2"},
                                                                     "1 thread)")):
        r = aromni(*base, *extra, env=env)
        assert r.returncode == 0, r.stderr.decode()
        assert f"cpu, {want}" in r.stderr.decode(), (extra, env, r.stderr.decode())
    r = aromni(*base, "--threads", "-2", env=clean)
    assert r.returncode == 2 and "threads must be >= 0" in r.stderr.decode()


def test_every_command_takes_threads():
    from test_cli import COMMANDS, aromni

    for cmd in COMMANDS:
        r = aromni(cmd, "--help")
        assert r.returncode == 0 and "--threads" in r.stdout.decode(), cmd


def test_cpu_name_reads_the_first_model_name():
    info = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t: avx2\n\nprocessor\t: 1\nmodel name\t: other\n"
    assert cpu_name(info) == "AMD EPYC 9B14"
    assert cpu_name("processor\t: 0\nmodel name\t:\n")  # no name given: platform's answer, never empty
    assert cpu_name() == cpu_name()
