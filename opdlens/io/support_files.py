"""The non-weight files a Hugging Face model directory needs to load, and copying them."""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["SUPPORT_PATTERNS", "copy_support_files", "is_support_file"]

SUPPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "preprocessor_config.json",
    # Remote-code models name these in config.json's auto_map and cannot load without them.
    "configuration_*.py",
    "modeling_*.py",
    "tokenization_*.py",
)


def is_support_file(name: str) -> bool:
    """Whether a file name is one a model directory needs besides its weights."""
    return any(fnmatch.fnmatch(name, p) for p in SUPPORT_PATTERNS)


def copy_support_files(source: Path, dest: Path, warnings: list[str] | None = None) -> list[str]:
    """Copy the support files of model directory `source` into `dest`; return their names.

    Code files (`*.py`) are copied only when `config.json` or `tokenizer_config.json` names their
    module in `auto_map` (remote-code models load them), and never when they are symlinks that
    leave `source`. Any other support file that is such a symlink is copied with a warning,
    logged and appended to `warnings`. A `source` without config.json is logged as a warning:
    the output will not load on its own.
    """
    warnings = [] if warnings is None else warnings
    home = source.resolve()
    wanted = _auto_map_modules(source)
    copied = []
    for path in sorted(source.iterdir()):
        if not (path.is_file() and is_support_file(path.name)):
            continue
        code = path.suffix == ".py"
        if code and path.stem not in wanted:
            logger.info("%s: not copied; no auto_map in its config names it", path)
            continue
        if _leaves(path, home):
            if code:
                warnings.append(
                    f"{path}: a symlink to {path.resolve()}, outside the checkpoint directory; "
                    "this code file was not copied into the output. Copy it in yourself if you "
                    "trust it."
                )
                logger.warning("%s", warnings[-1])
                continue
            warnings.append(
                f"{path}: a symlink to {path.resolve()}, outside the checkpoint directory; it "
                "was copied into the output as found. Check that it belongs to this model."
            )
            logger.warning("%s", warnings[-1])
        shutil.copy2(path, dest / path.name)
        copied.append(path.name)
    if "config.json" not in copied:
        logger.warning("copy_from=%s has no config.json; the output will lack it", source)
    logger.debug("copied %s from %s", copied, source)
    return copied


def _leaves(path: Path, home: Path) -> bool:
    """Whether `path` is a symlink resolving outside `home`, other than into a hub's blobs/."""
    if not path.is_symlink():
        return False
    target = path.resolve()
    hub_blobs = home.parent.name == "snapshots" and target.parent == home.parent.parent / "blobs"
    return home not in target.parents and not hub_blobs


def _auto_map_modules(source: Path) -> set[str]:
    """Module names (file stems) that `auto_map` in config.json / tokenizer_config.json names."""
    modules: set[str] = set()
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((source / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        auto = data.get("auto_map") if isinstance(data, dict) else None
        if not isinstance(auto, dict):
            continue
        for value in auto.values():
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, str) and "." in ref:
                    # "modeling_x.Class" or, from the hub, "org/repo--modeling_x.Class"
                    modules.add(ref.rsplit("--", 1)[-1].rsplit(".", 1)[0])
    return modules
