"""Commands without positional inputs refuse leftover arguments instead of ignoring them."""

from __future__ import annotations

from pathlib import Path

import pytest

from a2bs.cli import EXIT_CONFIG, main


@pytest.mark.parametrize("argv", [
    ["synth", "--out", "{tmp}", "synth.faces=2"],
    ["jobs", "status", "raysubmit_1", "--address", "http://127.0.0.1:1", "raysubmit_2"],
])
def test_leftover_arguments_are_a_configuration_error(argv: list[str], tmp_path: Path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"a2bs {argv[0]}: configuration error:" in err and argv[-1] in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_command_line_is_parsed_without_importing_torch_or_ray() -> None:
    """`a2bs COMMAND --help` (and the parser every command starts with) answers in under a second:
    torch and Ray load only in the command that runs (a fresh interpreter: this one has them already)."""
    import subprocess
    import sys

    code = ("import sys; from a2bs.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'mediapipe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
