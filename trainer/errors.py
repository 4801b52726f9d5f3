"""Errors the trainer raises. Each message names the bad value and what to do."""


class TrainerError(Exception):
    """Base class: caught by the CLI and printed as one line (exit code 2)."""


class ConfigError(TrainerError):
    """A config key or value is wrong."""


class DataError(TrainerError):
    """A dataset file or line is wrong."""


class BaseModelError(TrainerError):
    """A base model name or directory is wrong."""


class PublishError(TrainerError):
    """An adapter cannot be published (not servable, registry conflict)."""
