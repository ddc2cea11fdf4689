"""Build script: declares the Cython extension modules that own the wire work.

Metadata lives in pyproject.toml; this file only exists because setuptools
needs code to declare compiled extensions. Each module in ``ext/`` becomes
``chromanet.<name>``.
"""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

EXT_DIR = Path("ext")

extensions = [
    Extension(
        f"chromanet.{source.stem}",
        [str(source)],
        extra_compile_args=["-O2"],
    )
    for source in sorted(EXT_DIR.glob("*.pyx"))
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
