"""Errors the engine raises with a message meant for the user, one line each."""


class EngineError(Exception):
    """Base class: `str(err)` is a complete, user-facing sentence."""


class ModelLoadError(EngineError):
    """The model could not be found, verified or loaded."""


class Cancelled(EngineError):
    """The request was superseded or cancelled before it finished."""
