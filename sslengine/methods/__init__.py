"""Method registry: a name in the config maps to one thin class per method.

Adding a method = one file in this package that subclasses `Method` and is decorated with
`@register("name")`, plus its config section in `sslengine.config`.
"""

from __future__ import annotations

import importlib

from sslengine.methods.base import METHODS, Method, StepOutput, build_method, register

_MODULES = (
    "simclr",
    "moco",
    "swav",
    "barlow_twins",
    "rotation",
    "jigsaw",
    "relative_position",
    "pirl",
)

for _name in _MODULES:
    try:
        importlib.import_module(f"sslengine.methods.{_name}")
    except ModuleNotFoundError as err:  # a method file not written yet is simply not registered
        if err.name != f"sslengine.methods.{_name}":
            raise

__all__ = ["METHODS", "Method", "StepOutput", "build_method", "register"]
