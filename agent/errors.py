"""Errors a user can act on. The CLI prints their message and exits 1; the daemon reports them."""

from __future__ import annotations


class AgentError(Exception):
    """Base class: the message says what went wrong and, where possible, what to do."""


class ConfigError(AgentError):
    """A configuration key is missing or invalid; the message names the key."""


class UsageError(AgentError):
    """The command line is wrong (exit code 2)."""
