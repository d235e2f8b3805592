"""Declares the Cython extension(s) built from ext/; all metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

extensions = [
    Extension("s2sfast._framer", ["ext/framer.pyx"], extra_compile_args=["-O3"]),
]


class BuildExt(build_ext):
    """Links the framer without the interpreter's own run path.

    An interpreter built with ``-Wl,-rpath,<prefix>/lib`` in its link flags (pyenv's are) passes
    it to every extension, and auditwheel keeps it: the wheel would name a directory of the build
    machine. The framer links only libc, so it needs no run path at all.
    """

    def build_extensions(self) -> None:
        linker = self.compiler.linker_so
        self.compiler.linker_so = [arg for arg in linker if not arg.startswith("-Wl,-rpath")]
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        annotate=False,
    ),
)
