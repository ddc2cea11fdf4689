"""Build script: declares the Cython extension modules that own the wire work.

Metadata lives in pyproject.toml; this file only exists because setuptools
needs code to declare compiled extensions. Each ``ext/<name>.pyx`` becomes
``chromanet.<name>``. The ``.pxi`` files are included into one of them and the
``.pxd`` files hold inline declarations cimported by several (``from _bytes
cimport ...``, found through ``include_path``): neither is a module of its own.
"""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

EXT_DIR = Path("ext")

# CHROMANET_EXT="_pdu,_framer" limits a build to some modules; developers use
# it with ``python setup.py build_ext --inplace`` to rebuild just what they edit.
_only = {name.strip() for name in os.environ.get("CHROMANET_EXT", "").split(",") if name.strip()}

extensions = [
    Extension(
        f"chromanet.{source.stem}",
        [str(source)],
        extra_compile_args=["-O2"],
    )
    for source in sorted(EXT_DIR.glob("*.pyx"))
    if not _only or source.stem in _only
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=[str(EXT_DIR)],
        compiler_directives={
            # Bounds checks stay on by default: this code parses untrusted
            # bytes. A function may switch them off locally once it has
            # checked its lengths explicitly.
            "embedsignature": True,
        },
    ),
)
