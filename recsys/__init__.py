"""fedrec recommender core: data, splits, metrics, models, features, ranking."""

__version__ = "0.1.0"
