"""Import spandrel on machines whose torch has no matching torchvision.

spandrel's registry imports torchvision at module level only for LaMa (inpainting) and
RestoreFormer (face restoration); no SR architecture uses it. PyPI has no CPU build of
torchvision, and its CUDA build does not load against a CPU torch, so where torchvision is
absent we register an inert placeholder just long enough for ``import spandrel`` and remove
it again. Calling anything on it raises, naming the missing package.
"""

import importlib.util
import sys
import types

_PLACEHOLDER_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class _Missing:
    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} needs torchvision, which is not installed")

    def __getattr__(self, attr: str):
        return _Missing(f"{self._name}.{attr}")


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, attr: str):
        return _Missing(f"{self.__name__}.{attr}")


def import_spandrel():
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    for name in _PLACEHOLDER_MODULES:
        sys.modules[name] = _PlaceholderModule(name)
    try:
        import spandrel
    finally:
        for name in _PLACEHOLDER_MODULES:
            sys.modules.pop(name, None)
    return spandrel
