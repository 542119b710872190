"""hypersparse: a reproducible replication of HyperSparse / ART and its sparsification baselines."""

__version__ = "0.1.0"
