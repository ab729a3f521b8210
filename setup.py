"""Build hook: the optional C speedups. Metadata lives in setup.cfg."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the C extensions when possible; fall back to pure Python if not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers
            print(f"geows: C speedup not built ({exc}); using pure Python")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"geows: C speedup not built ({exc}); using pure Python")


setup(
    ext_modules=[
        Extension("geows._speedups", ["geows/_speedups.c"], optional=True),
        # The fast path of geows.http.parse_head for common request heads.
        Extension("geows._httpfast", ["geows/_httpfast.c"], optional=True),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
