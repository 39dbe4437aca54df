"""The HTTP API (`genq api`): the OpenAI Batch API and genq's native endpoints, producer side
only (it never imports the worker, torch or transformers)."""
