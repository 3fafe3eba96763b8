"""Training: `chattune.train.trainer.train` and what it uses.

``chattune.train(cfg)`` is the public entry point, and ``chattune.train`` is also this package: importing any
``chattune.train.*`` module makes Python bind the package to that name, which would hide the function. So the
package itself is callable and calls `chattune.train.trainer.train`: the README's API works whatever was
imported first.
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .trainer import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
