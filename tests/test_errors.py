"""The OpdlensError family: every member is public, catchable as its builtin, and one CLI line."""

from __future__ import annotations

import inspect

import pytest
import typer

import opdlens
from opdlens import errors
from opdlens.cli._app import handle_errors

FAMILY = [
    c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
]
# The builtin each member also is, so that API users' `except ValueError:` etc. still catch it.
ALSO = {
    "OutputError": OSError,
    "UnknownTensorError": KeyError,
    "OptionError": ValueError,
    "InputNotFoundError": FileNotFoundError,
    "InputFileError": ValueError,
    "NothingToDrawError": ValueError,
    "FusedSplitError": ValueError,
}


def test_the_family_is_what_this_test_knows() -> None:
    assert len(FAMILY) >= 12 and set(ALSO) <= {c.__name__ for c in FAMILY}


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_each_error_is_an_opdlens_error_exported_from_the_package(cls: type[Exception]) -> None:
    assert issubclass(cls, opdlens.OpdlensError)
    assert cls.__name__ in opdlens.__all__ and getattr(opdlens, cls.__name__) is cls
    assert cls.__doc__  # says when it is raised
    if cls.__name__ in ALSO:
        assert issubclass(cls, ALSO[cls.__name__])


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_each_error_is_one_line_and_exit_2_on_the_command_line(
    cls: type[Exception], capsys
) -> None:
    message = "run/checkpoint-3: expected a safetensors file, found a directory. Pass a file."

    @handle_errors
    def command() -> None:
        raise cls(message)

    with pytest.raises(typer.Exit) as exit_:
        command()
    assert exit_.value.exit_code == 2
    assert capsys.readouterr().err == f"opdlens: error: {message}\n"  # str(), never KeyError's repr
