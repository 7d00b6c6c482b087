"""Patching a function wherever tokentrail imported it (modules import functions by name
at their top, so patching the defining module alone misses the copies)."""

import sys


def patch_everywhere(monkeypatch, module, name: str, replacement) -> None:
    """Replace ``module.name`` and every tokentrail module's imported copy of it (modules
    import functions by name at their top, so patching the defining module alone misses them)."""
    real = getattr(module, name)
    monkeypatch.setattr(module, name, replacement)
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("tokentrail") and mod is not module and getattr(mod, name, None) is real:
            monkeypatch.setattr(mod, name, replacement)


def count_calls(monkeypatch, module, name: str) -> list:
    """Count the calls of ``module.name`` wherever tokentrail calls it (see :func:`patch_everywhere`)."""
    calls: list = []
    real = getattr(module, name)
    patch_everywhere(monkeypatch, module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls
