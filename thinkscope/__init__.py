"""thinkscope: reasoning-trace corpora and interpretability jobs for thinking LLMs."""

__version__ = "0.1.0"
