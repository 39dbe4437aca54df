"""Tools for development, tests and benchmarks (they import torch and transformers)."""
