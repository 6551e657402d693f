"""Print README's demo figures (the "Two commands" section) from the full demo's output.

    python scripts/demo_figures.py [OUT]   # OUT: the demo's directory, opdlens-demo by default

Runs the full demo into OUT as `opdlens demo --out OUT` does (a finished demo there is reused),
then prints the Markdown README shows between its demo-figures markers;
tests/demo/test_readme_figures.py checks README against a fresh run with the tolerances it states.
"""

from __future__ import annotations

import sys

from opdlens.demo.pipeline import run_demo
from opdlens.demo.readme import figures_markdown


def main() -> None:
    """Run (or reuse) the full demo and print its README figures."""
    out = sys.argv[1] if len(sys.argv) > 1 else "opdlens-demo"
    print(figures_markdown(run_demo(out, progress=False, workers=2)))


if __name__ == "__main__":
    main()
