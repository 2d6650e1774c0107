"""The program `kubectl modeldeploy upload` and `ls` run inside their short-lived pod.

Standard library only, and nothing newer than Python 3.8: it runs on whatever python3 the pod's image
has. The plugin puts this file's source into the pod's environment (`MODELDEPLOY_AGENT`) and runs it
with `python3 -c BOOTSTRAP MODE ...`, so the pod needs no file of ours on its image. Modes:

- `keep SECONDS`: the pod's main process. Sleeps until SIGTERM (the pod being deleted) or SECONDS, and
  on its way out removes any temporary upload file a killed `receive` left on the claim.
- `receive ROOT PATH SIZE SHA256 [--force]`: writes exactly SIZE bytes from stdin to a temporary file
  next to ROOT/PATH, hashing them as they arrive; renames it into place only if their sha256 is SHA256.
- `list ROOT [PREFIX]`: every regular file under ROOT/PREFIX, with its size and, for `.onnx` files,
  its sha256.

Each mode speaks JSON, one object a line, on stdout: `receive` first says `ready` (or why not) before
it reads a byte, so the plugin never streams a file into a refusal; the last line says how it ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import sys
import time
from typing import IO, Any

CHUNK = 1 << 20
SYNC_EVERY = 64 << 20  # bytes between two fdatasync calls: bounds the dirty pages the pod's memory holds
PENDING = os.environ.get("MODELDEPLOY_PENDING", "/tmp/modeldeploy-pending")  # noqa: S108 - the pod's emptyDir
TEMP_MARK = ".upload-"


def say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


class RefusedError(Exception):
    """What the plugin prints as the reason; `kind` lets it word the message."""

    def __init__(self, kind: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


def resolve(root: str, path: str) -> str:
    """ROOT/PATH, refused when a symbolic link on the way leads out of ROOT."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, path))
    if os.path.commonpath([real_root, target]) != real_root:
        raise RefusedError("path", f"{path} leads out of the claim (through a symbolic link)")
    return target


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_target(target: str, path: str, expected: str, force: bool) -> bool:
    """False when the file is already there with this digest; refuses to replace a different one."""
    if os.path.isdir(target):
        raise RefusedError("path", f"{path} is a folder on the claim")
    if not os.path.lexists(target):
        return True
    if not os.path.isfile(target):
        raise RefusedError("path", f"{path} exists on the claim and is not a regular file")
    present = sha256_of(target)
    if present == expected:
        return False
    if not force:
        raise RefusedError("exists", f"{path} already exists on the claim with another content", sha256=present)
    return True


def make_folders(folder: str, root: str) -> None:
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except PermissionError as error:
        raise RefusedError("permission", f"cannot create {os.path.relpath(folder, root)}: {error.strerror}",
                      uid=os.getuid()) from error


def open_temporary(target: str, root: str) -> tuple[str, int]:
    """A new file next to the target, recorded so that `keep` removes it if this process is killed."""
    folder, name = os.path.split(target)
    make_folders(folder, root)
    temporary = os.path.join(folder, f".{name}{TEMP_MARK}{secrets.token_hex(4)}")
    os.makedirs(PENDING, exist_ok=True)
    with open(os.path.join(PENDING, str(os.getpid())), "w") as record:  # first: a kill leaves no stray file
        record.write(temporary)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except PermissionError as error:
        forget_temporary(temporary)
        raise RefusedError("permission", f"cannot write into {os.path.relpath(folder, root)}: {error.strerror}",
                      uid=os.getuid()) from error
    return temporary, descriptor


def forget_temporary(temporary: str) -> None:
    for path in (temporary, os.path.join(PENDING, str(os.getpid()))):  # the record last, as it was made first
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def copy_exactly(source: IO[bytes], descriptor: int, size: int) -> str:
    """Write SIZE bytes from source; their sha256. Refuses a stream that ends early."""
    digest = hashlib.sha256()
    left, unsynced = size, 0
    while left:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            raise RefusedError("truncated", f"the stream ended after {size - left} of {size} bytes",
                          received=size - left)
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(descriptor, view):]
        left -= len(chunk)
        unsynced += len(chunk)
        if unsynced >= SYNC_EVERY:
            os.fdatasync(descriptor)
            unsynced = 0
    os.fsync(descriptor)
    return digest.hexdigest()


def receive(target: str, temporary: str, descriptor: int, size: int, expected: str,
            source: IO[bytes]) -> dict[str, Any]:
    """Into the temporary file, renamed over the target once its digest is the expected one."""
    try:
        try:
            got = copy_exactly(source, descriptor, size)
        finally:
            os.close(descriptor)
        if got != expected:
            raise RefusedError("digest", "the bytes received do not have the expected sha256", sha256=got)
        os.replace(temporary, target)
        folder = os.open(os.path.dirname(target), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        forget_temporary(temporary)
    return {"event": "done", "sha256": got, "size": size}


def run_receive(arguments: list[str]) -> int:
    root, path, size, expected = arguments[:4]
    try:
        target = resolve(root, path)
        if not check_target(target, path, expected, "--force" in arguments[4:]):
            say(event="unchanged", sha256=expected, size=os.path.getsize(target))
            return 0
        temporary, descriptor = open_temporary(target, root)  # before `ready`: a refusal costs no transfer
        say(event="ready")
        say(**receive(target, temporary, descriptor, int(size), expected, sys.stdin.buffer))
        return 0
    except RefusedError as refusal:
        say(event="error", kind=refusal.kind, message=str(refusal), **refusal.details)
    except OSError as error:
        say(event="error", kind="os", message=f"{error.strerror or error} ({error.filename or path})")
    return 1


def run_list(arguments: list[str]) -> int:
    root = arguments[0]
    prefix = arguments[1] if len(arguments) > 1 else ""
    try:
        start = resolve(root, prefix)
    except RefusedError as refusal:
        say(event="error", kind=refusal.kind, message=str(refusal))
        return 1
    real_root = os.path.realpath(root)
    found = [start] if os.path.isfile(start) else sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(start) for name in names)
    for path in found:
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        relative = os.path.relpath(path, real_root)
        try:
            digest = sha256_of(path) if path.endswith(".onnx") else None
            say(event="file", path=relative, size=os.path.getsize(path), sha256=digest)
        except OSError as error:
            say(event="file", path=relative, size=None, sha256=None, unreadable=error.strerror)
    say(event="end", missing=not os.path.exists(start))
    return 0


def clean_pending() -> None:
    """Remove the temporary files of receives that never finished (only files named as ours)."""
    if not os.path.isdir(PENDING):
        return
    for record in os.listdir(PENDING):
        try:
            with open(os.path.join(PENDING, record)) as handle:
                temporary = handle.read().strip()
            if TEMP_MARK in os.path.basename(temporary):
                os.unlink(temporary)
        except OSError:
            pass


def keep(seconds: float) -> int:
    def leave(signum: int, frame: object) -> None:
        clean_pending()
        sys.exit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    say(event="keeping")
    time.sleep(seconds)
    clean_pending()
    return 0


def main(arguments: list[str]) -> int:
    mode, rest = arguments[0], arguments[1:]
    if mode == "keep":
        return keep(float(rest[0]))
    if mode == "receive":
        return run_receive(rest)
    if mode == "list":
        return run_list(rest)
    say(event="error", kind="usage", message=f"unknown mode {mode!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
