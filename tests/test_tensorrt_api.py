"""Every TensorRT name the project uses exists in TensorRT 10 and 11.

``tests/data/tensorrt_api_names.tsv`` lists the identifiers in the compiled Python modules of the
TensorRT 10 and 11 bindings wheels (derived by ``scripts/tensorrt_api_names.py``; nothing is
downloaded here). The project's TensorRT code is read as Python source: every attribute taken
from ``trt`` or from a TensorRT object (builder, network, parser, engine, context) and every enum
member named by string must be in both versions' lists. ``tensorrt.plugin`` names are checked on
NVIDIA's package itself.
"""

import ast
from pathlib import Path

import pytest

import tensorrt_standin as standin
from harmoq_deploy.engine.tensorrt import HARDWARE_COMPATIBILITY, BuildSettings, config_choices

ROOT = Path(__file__).resolve().parent.parent
# the modules that hold TensorRT objects (bench.py takes the engine's memory from TensorRTRunner)
SOURCES = ["harmoq_deploy/engine/tensorrt.py", "harmoq_deploy/plugins/tensorrt_plugin.py"]
TRT_OBJECTS = {"trt", "builder", "network", "parser", "engine", "context", "runtime"}


def _strings() -> dict[str, set[str]]:
    strings = {}
    for line in (Path(__file__).parent / "data" / "tensorrt_api_names.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            string, majors = line.split("\t")
            strings[string] = set(majors.split())
    return strings


class _Names(dict):
    """Name -> the major versions whose module has it: a string equal to it, or ending in it
    (the linker keeps one copy of a string that ends another)."""

    def __init__(self):
        super().__init__()
        self.strings = _strings()

    def __missing__(self, name: str) -> set[str]:
        found = set().union(*[v for s, v in self.strings.items() if s.endswith(name)])
        self[name] = found
        return found


def _names() -> _Names:
    return _Names()


def _root(node: ast.expr) -> str | None:
    """The name an attribute is taken from: ``engine`` for ``self.engine.x``, ``trt`` for ``trt.A.B``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):  # trt.__version__.split is str's
        return node.attr if node.attr in TRT_OBJECTS else _root(node.value)
    return None


def _used(module: str, roots: set[str]) -> set[str]:
    tree = ast.parse((ROOT / module).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not node.attr.startswith("__") and _root(node.value) in roots:
            used.add(node.attr)
    return used


def test_the_name_list_tells_the_versions_apart():
    names = _names()
    assert len(names.strings) > 1000
    assert names["execute_async_v3"] == names["PREFER_AOT_PYTHON_PLUGINS"] == {"10", "11"}
    assert names["EXPLICIT_BATCH"] == {"10"} and names["device_memory_size"] == {"10"}, "removed in TensorRT 11"


@pytest.mark.parametrize("module", SOURCES)
def test_every_tensorrt_attribute_used_exists_in_tensorrt_10_and_11(module):
    names = _names()
    used = _used(module, TRT_OBJECTS)
    if module.endswith("tensorrt.py"):
        used |= set(HARDWARE_COMPATIBILITY.values()) | set(config_choices(BuildSettings(), 10, True)["network_flags"])
        assert {"NetworkDefinitionCreationFlag", "PREFER_AOT_PYTHON_PLUGINS", "device_memory_size_v2"} <= used
    missing = {name: sorted({"10", "11"} - names[name]) for name in used}
    assert not {n: v for n, v in missing.items() if v}, f"{module}: names missing from TensorRT (name: versions)"


def test_the_tensorrt_plugin_names_used_exist_in_nvidias_package():
    try:
        standin.load()
        import tensorrt.plugin as trtp

        used = _used("harmoq_deploy/plugins/tensorrt_plugin.py", {"trtp"})
        assert {"register", "aot_impl", "impl", "KernelLaunchParams", "SymIntExprs", "SymInt32", "cdiv"} <= used
        assert not [name for name in used if name != "op" and not hasattr(trtp, name)]
    finally:
        standin.unload()


def test_the_stand_in_invents_no_tensorrt_names():
    """Its TensorRT classes, enums and members are TensorRT 11's (the test helpers aside)."""
    names = _names()
    helpers = {"ExprBuilder", "SymExprSetter", "KernelLaunchParams", "DynamicPluginTensorDesc", "Dims", "DimsExprs",
               "IExprBuilder", "load", "unload", "np", "enum", "importlib", "sys", "types", "bool"}
    own = [n for n, v in vars(standin).items() if not n.startswith("_") and n not in helpers and isinstance(v, type)]
    members = [m for n in own if hasattr(vars(standin)[n], "__members__") for m in vars(standin)[n].__members__]
    assert len(own) > 20
    assert not [n for n in own + members if "11" not in names[n]]


def test_polygraphy_loaders_import_without_tensorrt_and_take_the_arguments_used():
    import inspect

    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, EngineFromBytes, NetworkFromOnnxPath, \
        Profile, TrtRunner

    def taken_by(loader) -> set[str]:  # keyword arguments pass up to the base loaders' __init__
        return set().union(*[inspect.signature(c.__init__).parameters for c in loader.__mro__ if "__init__" in vars(c)])

    taken = {loader: taken_by(loader) for loader in
             (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, TrtRunner, EngineFromBytes)}
    assert {"profiles", "memory_pool_limits", "hardware_compatibility_level", "load_timing_cache"} <= taken[CreateConfig]
    assert {"network", "config", "save_timing_cache"} <= taken[EngineBytesFromNetwork]
    assert {"path", "strongly_typed"} <= taken[NetworkFromOnnxPath]
    assert Profile().add("input", min=(1, 3, 8, 8), opt=(1, 3, 8, 8), max=(1, 3, 8, 8))["input"].min == (1, 3, 8, 8)
