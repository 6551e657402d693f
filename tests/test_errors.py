"""The OpdlensError family: every member is public, catchable as its builtin, and one CLI line;
every exception class of opdlens is in errors.py."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import pytest
import typer

import opdlens
from opdlens import errors
from opdlens.cli._app import handle_errors

CLASSES = [
    c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
]
FAMILY = [c for c in CLASSES if issubclass(c, errors.OpdlensError)]
# Raised by one part of opdlens for another to catch; never a user's error.
SIGNALS = {
    "Stopped",
    "Terminated",
    "StdoutClosed",
    "PickleRefused",
    "DuplicateJSONKey",
    "CacheFileError",
}
# The builtin each member also is, so that API users' `except ValueError:` etc. still catch it.
ALSO = {
    "OutputError": OSError,
    "UnknownTensorError": KeyError,
    "OptionError": ValueError,
    "InputNotFoundError": FileNotFoundError,
    "InputFileError": ValueError,
    "NothingToDrawError": ValueError,
    "FusedSplitError": ValueError,
    "TrainingLogError": ValueError,
    "NoTrainingLogError": ValueError,
}


def test_the_family_is_what_this_test_knows() -> None:
    assert len(FAMILY) >= 15 and set(ALSO) <= {c.__name__ for c in FAMILY}
    assert {c.__name__ for c in CLASSES} - {c.__name__ for c in FAMILY} == SIGNALS
    assert not {c.__name__ for c in CLASSES if c.__name__ in SIGNALS} & set(opdlens.__all__)


def exception_classes_outside(root: Path, home: str = "errors.py") -> list[str]:
    """`path:Class` for each class of `root` that derives from an exception, outside `home`.

    A class counts when a base is a builtin exception, is named *Error or *Exception, or is a
    class of errors.py (Stopped, …).
    """
    builtin = {n for n, v in vars(builtins).items() if isinstance(v, type)}
    builtin = {n for n in builtin if issubclass(getattr(builtins, n), BaseException)}
    known = builtin | {c.__name__ for c in CLASSES}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            names = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
            if any(n.endswith(("Error", "Exception")) or n in known for n in names):
                found.append(f"{path.relative_to(root)}:{node.name}")
    return found


def test_every_exception_class_is_in_errors_py() -> None:
    assert exception_classes_outside(Path(opdlens.__file__).parent) == []


def test_the_check_sees_exceptions_by_base(tmp_path: Path) -> None:
    (tmp_path / "errors.py").write_text("class AError(Exception): ...\n")
    (tmp_path / "a.py").write_text(
        "import errors\nclass B(errors.OptionError): ...\nclass C(ValueError): ...\n"
        "class D(Stopped): ...\nclass E: ...\nclass F(dict): ...\nclass G(KeyboardInterrupt): ...\n"
    )
    assert exception_classes_outside(tmp_path) == ["a.py:B", "a.py:C", "a.py:D", "a.py:G"]


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
