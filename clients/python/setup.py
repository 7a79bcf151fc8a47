"""Build steps of switchboard-client that pyproject.toml cannot declare.

The gRPC stubs are not committed: `build_py` compiles the repository's `.proto` files
(`../../proto/switchboard/v1/*.proto`, or the copy an sdist carries in `proto/`) with
grpcio-tools into the package `switchboard.v1`. The generated code checks at import that the
installed grpcio and protobuf are at least the versions it was generated for, so the
distribution depends on exactly what the build's grpcio-tools requires of them.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_PACKAGE = Path("switchboard") / "v1"
# The repository's wire contract, then the copy an sdist carries.
PROTO_ROOTS = (HERE.parent.parent / "proto", HERE / "proto")
# The runtime requirements of grpcio-tools that generated code needs.
RUNTIME_REQUIREMENTS = ("grpcio", "protobuf")


def proto_root() -> Path:
    """The directory whose `switchboard/v1/*.proto` are compiled."""
    for root in PROTO_ROOTS:
        if any((root / PROTO_PACKAGE).glob("*.proto")):
            return root
    searched = ", ".join(str(root / PROTO_PACKAGE) for root in PROTO_ROOTS)
    raise FileNotFoundError(f"no .proto files found in {searched}")


def requirement_name(requirement: str) -> str:
    """The distribution name a requirement string starts with (`protobuf<8,>=7.35`)."""
    end = len(requirement)
    for mark in "<>=!~;[ ":
        index = requirement.find(mark)
        if index != -1:
            end = min(end, index)
    return requirement[:end].strip().lower()


def runtime_requirements() -> list[str]:
    """grpcio and protobuf, as the installed grpcio-tools (a build requirement) requires them."""
    try:
        tools = metadata.requires("grpcio-tools") or []
    except metadata.PackageNotFoundError as error:
        raise RuntimeError(
            "grpcio-tools is needed to build switchboard-client: "
            "pip install grpcio-tools (pip does this itself for `pip install ./clients/python`)"
        ) from error
    found = [r for r in tools if requirement_name(r) in RUNTIME_REQUIREMENTS]
    missing = set(RUNTIME_REQUIREMENTS) - {requirement_name(r) for r in found}
    if missing:
        raise RuntimeError(f"grpcio-tools declares no requirement on {', '.join(sorted(missing))}")
    return found


def generate_stubs(out_dir: Path) -> None:
    """Compiles every `switchboard/v1/*.proto` into `out_dir/switchboard/v1/` (messages,
    type stubs and gRPC stubs)."""
    from grpc_tools import protoc  # a build requirement, imported only when building

    root = proto_root()
    protos = sorted(str(p.relative_to(root)) for p in (root / PROTO_PACKAGE).glob("*.proto"))
    target = out_dir / PROTO_PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with status {status} on {root}")
    (target / "__init__.py").write_text(
        '"""Messages and gRPC stubs generated from proto/switchboard/v1 at build time."""\n'
    )


class BuildPyWithStubs(build_py):
    """build_py that also generates the gRPC stubs: into the build tree, or into the source
    tree for an editable install (which imports from there)."""

    def run(self) -> None:
        super().run()
        generate_stubs(HERE / "src" if self.editable_mode else Path(self.build_lib))


class SdistWithProtos(sdist):
    """sdist that carries the .proto files, so that a wheel builds from it alone."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        source = proto_root() / PROTO_PACKAGE
        shutil.copytree(source, Path(base_dir) / "proto" / PROTO_PACKAGE, dirs_exist_ok=True)


setup(
    install_requires=runtime_requirements(),
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos},
)
