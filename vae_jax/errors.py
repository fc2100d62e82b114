"""Errors a user can cause. The CLI prints their one-line message and exits with status 2."""


class ConfigError(ValueError):
    """A config field, flag or workdir that cannot be used; the message names it and what works."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss; the message names the step and the offending term."""
