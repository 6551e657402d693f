"""Integrations with training frameworks; each submodule imports its framework when imported.

`opdlens.integrations.transformers`: EffOPD and power-of-two saving as Hugging Face Trainer
callbacks (TRL's trainers are Trainers too); needs `pip install 'opdlens[hf]'`.
"""
