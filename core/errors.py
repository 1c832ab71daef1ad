"""One exception type for every user mistake, so `run.py` can print it as a single line."""


class ConfigError(ValueError):
    """Bad user input: the message names the bad value and what is allowed."""
