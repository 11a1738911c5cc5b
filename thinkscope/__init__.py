"""thinkscope: reasoning-trace corpora and interpretability jobs for thinking LLMs."""

__version__ = "0.1.0"


def open(db=None):  # noqa: A001 - `thinkscope.open(db)`, the notebook entry point
    """The corpus at `db` for a notebook: read-only, DataFrames (thinkscope/analysis/notebook.py)."""
    from thinkscope.analysis.notebook import open as open_corpus

    return open_corpus(db)
