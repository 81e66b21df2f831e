"""Build of the one C extension; everything else about the package is in pyproject.toml.

``runstream._ringfast`` is the C fast path of the ring writer (``log``'s hot path).  It is
optional: where it cannot be compiled (no compiler, a big-endian CPU) the install still succeeds
and ``runstream.ring`` uses its pure-Python writer (``runstream.ring.NATIVE`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "runstream._ringfast",
            sources=["sdk/runstream/_ringfast.c"],
            depends=[
                "sdk/runstream/_ringfast_crc.h",
                "sdk/runstream/_ringfast_pack.h",
                "sdk/runstream/_ringfast_media.h",
            ],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
