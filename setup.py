"""Build configuration beyond pyproject.toml: the optional native pass-1 kernels.

`neuronindex._pass1` (neuronindex/_pass1.cpp) runs the pass-1 reduction and top-list merge on
torch's own OpenMP threads. It is optional: where it cannot be compiled (no C++ compiler, no
OpenMP) the install still succeeds and neuronindex uses its numba kernels instead.
"""
import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-fopenmp", "-std=c++17"]
setup(
    ext_modules=[
        Extension(
            "neuronindex._pass1",
            sources=["neuronindex/_pass1.cpp"],
            language="c++",
            extra_compile_args=flags,
            extra_link_args=[] if sys.platform == "win32" else ["-fopenmp"],
            optional=True,
        )
    ]
)
