"""Makes Triton's interpreter skip work it repeats, so the Triton tests take less CI time.

The interpreter patches `triton.language` (five `inspect.getmembers` scans, about half a
millisecond) once per launch, in `GridExecutor.__call__`, and restores it afterwards. It also
patches it again on every call of a `@triton.jit` helper from inside a kernel
(`InterpretedFunction.__call__`), and never restores those. fusedopt's kernels call their
helpers (the optimizers' math, the 8-bit codes) once per block of elements, so the repeats
were about half of every interpreted step.

A repeat changes nothing:
- A builtin that is already patched is a plain function. It no longer carries Triton's
  builtin mark, so the scan skips it.
- The tensor and core attributes are set again to equal closures.

So inside a launch, a helper whose language modules the launch has already patched skips
the patch. Anything else (a helper that sees another language module, a Triton version
without these functions) takes the interpreter's own path. The kernels compute the same
values either way; only the time differs.
"""
from __future__ import annotations

import inspect

_MARK = "_fusedopt_tests_skips_repeats"


class _NothingToRestore:
    @staticmethod
    def restore() -> None:
        pass


def skip_repeated_language_patches() -> bool:
    """Install the shortcut into Triton's interpreter; False where its internals differ."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    patch_lang = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if patch_lang is None or executor is None:
        return False
    if getattr(patch_lang, _MARK, False):
        return True
    launch = executor.__call__
    patched = []  # one entry per launch in progress: the ids of the modules it patched (None: not yet)
    seen = {}  # id(globals) -> (globals, kept so that the id stays theirs; the language modules in them)

    def languages(fn) -> frozenset:
        # the modules the interpreter's _patch_lang patches for fn
        entry = seen.get(id(fn.__globals__))
        if entry is None:
            entry = seen[id(fn.__globals__)] = (fn.__globals__, frozenset(
                id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and (v is tl or v is tl.core)))
        return entry[1]

    def patch_lang_once(fn):
        if patched and patched[-1] is not None and languages(fn) <= patched[-1]:
            return _NothingToRestore()
        scope = patch_lang(fn)
        if patched and patched[-1] is None:  # the launch's own patch
            patched[-1] = languages(fn)
        return scope

    def launch_tracked(self, *args, **kwargs):
        patched.append(None)
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    setattr(patch_lang_once, _MARK, True)
    interpreter._patch_lang = patch_lang_once
    executor.__call__ = launch_tracked
    return True
