"""Figures (placeholder until the figures module lands)."""


def plot_run(run_dir, data_dir=None):
    return []
