"""Tools for development, tests and benchmarks. ``random_model`` imports torch and
transformers; ``redis_server`` (a private Redis server process) does not."""
