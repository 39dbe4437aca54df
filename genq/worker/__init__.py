"""The GPU side: a Celery worker that batches prompts from any number of jobs through a model.

Importing this package loads Celery only; torch and transformers load when an engine is created.
"""
