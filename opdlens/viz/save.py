"""Save a figure as PDF, SVG and 200-dpi PNG side by side, headless and reproducibly."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

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
    with paper_style(), _laid_out(fig) as bbox:
        for fmt, metadata in _METADATA.items():
            if fmt not in formats:
                continue
            path = out_dir / f"{stem}.{fmt}"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=metadata, bbox_inches=bbox)
            paths.append(path)
    logger.info("saved figure %s.{%s} in %s", stem, ",".join(formats), out_dir)
    return paths


@contextmanager
def _laid_out(fig: Figure) -> Iterator[Bbox]:
    """The figure laid out once, its layout held and its tight bounding box (inches, padded).

    savefig(bbox_inches="tight") runs the layout engine and measures every artist again for
    each format; a figure with a constrained layout spent most of its saving time there.
    """
    fig.draw_without_rendering()  # runs the layout engine
    pad = matplotlib.rcParams["savefig.pad_inches"]
    bbox = fig.get_tightbbox().padded(pad)
    engine = fig.get_layout_engine()
    if engine is not None:
        # No engine at all (not "none", whose placeholder savefig still draws for): the
        # positions just computed stay, and each format is drawn once.
        with matplotlib.rc_context(
            {"figure.autolayout": False, "figure.constrained_layout.use": False}
        ):
            fig.set_layout_engine(None)
    try:
        yield bbox
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)


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
