from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as readme:
    long_description = readme.read()

setup(
    name="tqueues",
    version="0.1.0",
    description="A distributed job queue for Python: aiohttp dispatcher, HTTP workers, live websocket feeds",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tqueues", "tqueues.*"]),
    package_data={"tqueues": ["py.typed"], "tqueues.dispatcher": ["ui/*.html", "ui/*.js", "ui/*.css"]},
    install_requires=[
        "aiohttp>=3.9",
        "orjson>=3.9",
        "docopt-ng>=0.9",
        "asyncpg>=0.30",
        "uvloop>=0.19; sys_platform != 'win32' and platform_python_implementation == 'CPython'",
    ],
    extras_require={
        "rethinkdb": [
            "rethinkdb>=2.4.10",
        ],
        "jwt": [
            "PyJWT>=2.8",
            "cryptography>=41",
        ],
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "pytest-timeout>=2.2",
            "PyJWT>=2.8",
            "cryptography>=41",
            "hypothesis>=6.100",
            "rethinkdb>=2.4.10",   # the RethinkDB store imports in every test run
            "playwright>=1.40",   # drives the system's Chromium for the dashboard tests
        ],
    },
    entry_points={
        "console_scripts": [
            "tqueues_dispatcher=tqueues.cli.dispatcher:main",
            "tqueues_worker=tqueues.cli.worker:main",
            "tqueues=tqueues.cli.main:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: AsyncIO",
        "Framework :: aiohttp",
        "Topic :: System :: Distributed Computing",
    ],
)
