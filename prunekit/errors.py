"""Exception types shared by the library, the CLI and the app.

Every error raised for bad user input is a :class:`ConfigError` (a ``ValueError``) whose message names the
argument and the value received; the CLI turns it into a one-line message and exit status 2.
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """Bad user input: an unknown name, an out-of-range option, impossible shapes."""


class DataNotFoundError(ConfigError, FileNotFoundError):
    """A dataset is not on disk and cannot be downloaded; the message says where we looked."""


class UnsupportedModelError(PrunekitError):
    """The graph analysis cannot handle a layer; the message names it."""


class CollapseError(PrunekitError):
    """Collapse would return a network whose outputs differ from the gated network's."""


class CheckpointError(PrunekitError):
    """A checkpoint or slim-model file is corrupt, foreign or does not match the model."""
