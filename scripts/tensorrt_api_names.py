"""Derive tests/data/tensorrt_api_names.tsv: the identifiers in TensorRT 10's and 11's compiled Python modules.

The compiled module of each ``tensorrt-cu12-bindings`` wheel (``tensorrt_bindings/tensorrt.so``)
holds every class, method, attribute and enum member name the Python API registers, as C strings.
This script downloads the two wheels (pip, PyPI), reads each module's identifier-like strings
(mangled C++ symbols and CPython's own names dropped) and writes one line per string with the
major versions that have it. The linker stores a string that ends another only once
(``num_errors`` inside ``get_num_errors``, ``SUM`` inside ``EINSUM``), so a name is in a version
when one of its strings ends with it; docstrings are not read (they still name attributes a
version removed). ``tests/test_tensorrt_api.py`` checks every TensorRT name the
project uses against the file; nothing is downloaded at test time.

    python scripts/tensorrt_api_names.py            # the pinned versions below
"""

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSIONS = {"10": "10.16.1.11", "11": "11.4.0.106"}
OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tensorrt_api_names.tsv"
IDENTIFIER = re.compile(rb"(?<![A-Za-z0-9_])[A-Za-z][A-Za-z0-9_]{2,}(?=\x00)")
NOT_API = re.compile(r"^(Py|_Py|pybind11|N[0-9]|Z[0-9]|S[0-9])|^[A-Z][a-z]?[0-9]")


def module_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        binary = archive.read("tensorrt_bindings/tensorrt.so")
    strings = {m.decode() for m in IDENTIFIER.findall(binary)}
    return {n for n in strings if not NOT_API.search(n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        for major, version in VERSIONS.items():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                            folder, f"tensorrt-cu12-bindings=={version}"], check=True)
            wheel = next(Path(folder).glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
            for name in module_names(wheel):
                found.setdefault(name, []).append(major)
    header = [f"# identifiers in tensorrt_bindings/tensorrt.so of tensorrt-cu12-bindings "
              f"{', '.join(VERSIONS.values())}; written by scripts/tensorrt_api_names.py",
              "# string\tmajor versions (a name exists where a string ends with it)"]
    lines = [f"{name}\t{' '.join(majors)}" for name, majors in sorted(found.items())]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text("\n".join(header + lines) + "\n")
    tmp.replace(args.output)
    print(f"{args.output}: {len(lines)} names")


if __name__ == "__main__":
    main()
