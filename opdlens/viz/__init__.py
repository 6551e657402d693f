"""Paper-style figures: style.py (the look), plots.py (data to Figure), export.py (files)."""
