"""Writes the Python stubs of the Open Inference Protocol's gRPC service from its proto file.

``serving-image/modeldeploy_server/protos/grpc_predict_v2.proto`` is the source; protoc (grpcio-tools,
pinned in the dev extra so the output does not change under us) writes the messages and the service
descriptor (``grpc_predict_v2_pb2.py``) and their types (``.pyi``) next to it; the server builds its
method handlers from that descriptor (``grpc_front``), so no servicer stubs are needed. The stubs are
checked in so the image needs no protoc; ``--check`` regenerates them into a scratch folder and fails
when the checked-in ones differ (a test runs it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

SOURCES = Path(__file__).resolve().parent.parent / "serving-image"
PROTO = Path("modeldeploy_server") / "protos" / "grpc_predict_v2.proto"
OUTPUTS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi")


def generate(into: Path) -> dict[str, bytes]:
    """Run protoc with the proto's import root as the output root; the stubs' bytes by file name."""
    arguments = [
        "protoc",
        f"-I{SOURCES}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        str(SOURCES / PROTO),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    return {name: (into / PROTO.parent / name).read_bytes() for name in OUTPUTS}


def main() -> int:
    target = SOURCES / PROTO.parent
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
    if "--check" in sys.argv:
        stale = [name for name, content in fresh.items() if not (target / name).exists()
                 or (target / name).read_bytes() != content]
        if stale:
            print(f"stale gRPC stubs: {', '.join(stale)}; run `python hack/make_grpc_stubs.py`", file=sys.stderr)
            return 1
        return 0
    for name, content in fresh.items():
        (target / name).write_bytes(content)
    print(f"wrote {', '.join(OUTPUTS)} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
