"""The non-weight files a Hugging Face model directory needs to load, and copying them."""

from __future__ import annotations

import fnmatch
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


def copy_support_files(source: Path, dest: Path) -> list[str]:
    """Copy the support files of model directory `source` into `dest`; return their names.

    A `source` without config.json is logged as a warning: the output will not load on its own.
    """
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and is_support_file(path.name):
            shutil.copy2(path, dest / path.name)
            copied.append(path.name)
    if "config.json" not in copied:
        logger.warning("copy_from=%s has no config.json; the output will lack it", source)
    logger.debug("copied %s from %s", copied, source)
    return copied
