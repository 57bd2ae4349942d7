"""Every optimizer module in this package is imported here, which registers its spec
(fusedopt/optim/_spec.py); each lists its public classes in `__all__`, so a new optimizer
is one new module and nothing here changes."""
import importlib as _importlib
import pkgutil as _pkgutil

__all__ = []
for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    _loaded = _importlib.import_module(f"{__name__}.{_module}")
    for _name in _loaded.__all__:
        globals()[_name] = getattr(_loaded, _name)
        __all__.append(_name)
__all__.sort()
