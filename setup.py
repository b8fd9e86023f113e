"""Build of the two compiled kernels (everything else is in pyproject.toml).

``homeloc_assets.hll._kernel`` (the grouped hll union) and ``homeloc_assets.inputs._scan``
(the reader's line scan) are optional: without a C compiler the install still succeeds
and each falls back to its numpy reference (``hll/_vector.py``, ``inputs/reader.py``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "homeloc_assets.hll._kernel",
            ["homeloc_assets/hll/_kernel.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        ),
        Extension(
            "homeloc_assets.inputs._scan",
            ["homeloc_assets/inputs/_scan.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        ),
    ]
)
