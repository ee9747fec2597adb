"""Every CLI error ends in one line and exit code 2; --debug shows the traceback; help shows defaults."""
import subprocess
import sys

import pytest

from cellzoo import cli
from cellzoo._cli import evaluate as evaluate_cli


@pytest.mark.parametrize("error", [TypeError("bad operand"), MemoryError(), PermissionError(13, "Permission denied"),
                                   ZeroDivisionError("division by zero"), KeyError("family")])
def test_any_error_is_one_line_and_exit_2(monkeypatch, capsys, error):
    def failing_run(args):
        raise error

    monkeypatch.setattr(evaluate_cli, "run", failing_run)  # fault injection into the sub-command
    assert cli.main(["evaluate", "--gt", "a", "--pred", "b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cellzoo evaluate: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    if isinstance(error, MemoryError):
        assert "smaller --tile" in err
    if isinstance(error, (TypeError, ZeroDivisionError)):
        assert type(error).__name__ in err and "--debug" in err


def test_debug_shows_the_traceback(monkeypatch):
    def failing_run(args):
        raise TypeError("bad operand")

    monkeypatch.setattr(evaluate_cli, "run", failing_run)
    with pytest.raises(TypeError):
        cli.main(["--debug", "evaluate", "--gt", "a", "--pred", "b"])


def test_missing_files_say_so_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cellzoo.cli", "evaluate", "--gt", str(tmp_path / "no_gt"),
                             "--pred", str(tmp_path / "no_pred")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no_gt" in result.stderr


def test_help_shows_real_defaults_only(capsys):
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "default" in out


def test_an_output_folder_that_cannot_be_made_is_one_line(capsys):
    """/proc refuses new folders even for root (a read-only folder cannot be tested as root otherwise)."""
    assert cli.main(["segment", "--sample", "--out", "/proc/cellzoo-cannot-exist"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the output folder /proc/cellzoo-cannot-exist" in err and "Traceback" not in err
