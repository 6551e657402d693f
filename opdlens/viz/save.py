"""Save a figure as PDF, SVG and 200-dpi PNG side by side, headless and reproducibly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from opdlens.io.paths import atomic_file, output_error
from opdlens.viz.style import paper_style

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "PNG_DPI", "FigureSet", "save_figure"]

PNG_DPI = 200
# No creation dates, so re-exporting an unchanged figure gives identical PDF and SVG files.
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}
FORMATS = tuple(_METADATA)


def save_figure(
    fig: Figure, out_dir: Path, stem: str, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Write `fig` to out_dir/stem.pdf, .svg and .png (200 dpi), or only `formats` of these;
    return the paths."""
    if not isinstance(fig, Figure):
        raise TypeError(
            f"The 'fig' argument of save_figure must be a matplotlib Figure (what the opdlens "
            f"plotting functions return). Got {type(fig).__name__} instead."
        )
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(
            f"The 'stem' argument of save_figure must be a bare file name without directories "
            f"or suffix, e.g. 'allocation'. Got {stem!r} instead; put directories in out_dir."
        )
    if not formats or not set(formats) <= set(FORMATS):
        raise ValueError(
            f"The 'formats' argument of save_figure takes some of {FORMATS}. Got {formats!r}."
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out_dir, e) from None
    paths = []
    with paper_style():
        for fmt, metadata in _METADATA.items():
            if fmt not in formats:
                continue
            path = out_dir / f"{stem}.{fmt}"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=metadata, bbox_inches="tight")
            paths.append(path)
    logger.info("saved figure %s.{%s} in %s", stem, ",".join(formats), out_dir)
    return paths


@dataclass
class FigureSet:
    """Saved figures (stem → PDF, SVG, PNG paths), their titles and captions, and skip notes."""

    paths: dict[str, list[Path]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def png(self, stem: str) -> Path:
        """The PNG file of one figure."""
        return next(p for p in self.paths[stem] if p.suffix == ".png")
