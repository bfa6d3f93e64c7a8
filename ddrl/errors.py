"""The errors a user can cause and fix, in one module that every layer may import.

* ``ConfigError``: a recipe, override or combination of components that cannot run; the message
  names the field and what is allowed.
* ``RegistryError``: an unknown, ambiguous or unusable component name.
* ``PluginContractError``: a component that does not do what its group's interface promises (a
  ``RegistryError``, so the CLI reports it like any other unusable component).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message says which field and what is allowed."""


class RegistryError(LookupError):
    """An unknown, ambiguous or unusable component name."""


class PluginContractError(RegistryError, TypeError):
    """A component that breaks its group's interface; the message names its distribution."""
