"""The built-in demo: a toy addition task, a tiny Llama-style model, and OPD vs RL runs."""

from opdlens.demo.runs import DemoRuns, OnlineComparison, finished_runs, generate_runs
from opdlens.demo.settings import DemoSettings
from opdlens.demo.train import accuracy

__all__ = [
    "DemoRuns",
    "DemoSettings",
    "OnlineComparison",
    "accuracy",
    "finished_runs",
    "generate_runs",
]
