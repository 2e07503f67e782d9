"""The LSP side of codestral-ls: protocol, context, post-processing. Never imports torch."""

__version__ = "0.1.0"
