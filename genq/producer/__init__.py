"""The producer side: the Python client and the ``genq`` command line. Never imports the worker."""
