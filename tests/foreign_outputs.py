"""Output paths opdlens did not write (a user's file, a link to their directory, their directory)."""

from __future__ import annotations

from pathlib import Path

# What each kind of foreign --out is refused with (the error message's own words).
REFUSED = {
    "file": "is a regular file, not a directory",
    "symlink": "is a symbolic link",
    "unmarked": "is not empty and opdlens did not write it (no .opdlens marker inside)",
}


def user_dir(tmp_path: Path) -> Path:
    """A directory of someone's work, which no command may touch."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    return user


def foreign_out(tmp_path: Path, kind: str) -> Path:
    """`tmp_path/out` made into one of REFUSED's kinds: a file, a symlink to user_dir, user_dir."""
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
    elif kind == "symlink":
        out.symlink_to(user_dir(tmp_path))
    else:
        user_dir(tmp_path).rename(out)
    return out
