"""Build of the compiled hll kernel (everything else is in pyproject.toml).

``homeloc_assets.hll._kernel`` is optional: without a C compiler the install still
succeeds and the engine uses its numpy reference path (``homeloc_assets/hll/_vector.py``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "homeloc_assets.hll._kernel",
            ["homeloc_assets/hll/_kernel.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    ]
)
