"""autotune: measure the machine (``probes``), plan the run (``autotune.planner``),
train (``trainers``). This package holds the planner, the CLI and the reports."""

__version__ = "0.1.0"
