"""`kubectl modeldeploy upload` and `ls`: models onto a claim, and what a claim holds, in one command.

    kubectl modeldeploy upload model.onnx --pvc models --path sentiment/v1/model.onnx
    kubectl modeldeploy ls --pvc models [--path sentiment/]

Both run a short-lived pod that mounts the claim (read-write for upload, read-only for ls) and meets Pod
Security "restricted"; the file travels through the API server as the stdin of an exec into that pod,
the same path `kubectl exec` and `kubectl cp` take. Exec rather than a receiver behind the API server's
pod proxy or a port-forward, because exec works wherever `kubectl exec` does: the API server reaches the
pod through its kubelet, so it needs no route to the pod network (the pod proxy does) and no port open
in the pod, and a namespace user's `edit` role already grants it. The stream carries exactly the file's
size (the pod reads that many bytes, so no end-of-stdin signal is needed, which the older exec protocol
lacks) in chunks of 256 KiB: the file is never held in memory on either side. In the pod
(`claim_agent.py`) the bytes go to a temporary file next to the target while their sha256 is computed;
only a digest equal to the one computed here before the upload renames it into place. The pod is
deleted on every way out (errors, Ctrl-C, SIGTERM), and an `activeDeadlineSeconds` ends it even if this
process is killed outright.

Layout as in `plugin.py`: pure functions first, then `ClaimPod` (the API server), then the commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from modeldeploy_operator import claim_agent, onnxfile
from modeldeploy_operator.plugin import Connection, JSONObject, PluginError, _api_message, api_client, format_table
from modeldeploy_operator.spec import ModelSource

COMMANDS = ("upload", "ls")
CLAIM_ROOT = "/claim"
CONTAINER = "files"
UID = 65532
CHUNK = 256 << 10
LIFETIME_SECONDS = 3600
DELETE_GRACE_SECONDS = 5
GONE_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.5
REPLY_TIMEOUT_SECONDS = 600.0
AGENT_ENV = "MODELDEPLOY_AGENT"
BOOTSTRAP = f"import os; exec(compile(os.environ['{AGENT_ENV}'], 'claim_agent.py', 'exec'))"
WRITABLE_MODES = {"ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"}
# Reasons a container waits with that do not pass by waiting longer.
FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
PLAIN_SCALAR = r"^[A-Za-z_][A-Za-z0-9_./-]*$"
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


# ---------------------------------------------------------------------------------------------
# Pure functions.
# ---------------------------------------------------------------------------------------------


def default_image() -> str:
    """The CPU serving image of this release: what the chart's `serverImage.cpu` deploys (it has python3)."""
    try:
        version = metadata.version("modeldeploy")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    return f"ghcr.io/modeldeploy/modeldeploy-server:{version}-cpu"


def location(claim: str, path: str | None) -> ModelSource:
    """The claim and path checked by spec.model's own rules; a refusal names the flag and the reason."""
    try:
        return ModelSource(pvc=claim, path=path if path is not None else "x")
    except ValidationError as error:
        flags = {"pvc": "--pvc", "path": "--path"}
        problems = []
        for item in error.errors():
            field = str(item["loc"][0]) if item.get("loc") else ""
            value = str(claim if field == "pvc" else path)
            shown = repr(value if len(value) <= 80 else value[:60] + "...")
            problems.append(f"{flags.get(field, field)} {shown}: {item['msg'].removeprefix('Value error, ')}")
        raise PluginError("; ".join(problems)) from None


def yaml_scalar(value: str) -> str:
    """VALUE as a plain YAML scalar when that reads back as the same string, else double-quoted."""
    if re.match(PLAIN_SCALAR, value) and value.lower() not in YAML_WORDS:
        return value
    return json.dumps(value)


def model_snippet(claim: str, path: str, sha256: str) -> str:
    """The `model:` entry of a ModelDeployment's spec pinning the uploaded file by its digest."""
    return f"model: {{pvc: {yaml_scalar(claim)}, path: {yaml_scalar(path)}, sha256: {json.dumps(sha256)}}}\n"


def claim_refusal(claim: Mapping[str, Any], volume: Mapping[str, Any] | None) -> str | None:
    """Why a pod could not write to this claim, or None. `volume` is its bound PV when readable."""
    name = (claim.get("metadata") or {}).get("name", "?")
    status = claim.get("status") or {}
    if status.get("phase") == "Lost":
        return f"claim {name} is Lost: its volume is gone"
    modes = set(status.get("accessModes") or (claim.get("spec") or {}).get("accessModes") or [])
    if volume is not None:
        modes = set((volume.get("spec") or {}).get("accessModes") or modes)
    if modes and not modes & WRITABLE_MODES:
        return (f"claim {name} is bound to a ReadOnlyMany volume (access modes: {', '.join(sorted(modes))}): "
                "no pod can write to it; write to the volume's source, or upload to a ReadWriteOnce claim")
    for source, settings in ((volume or {}).get("spec") or {}).items():
        if isinstance(settings, Mapping) and settings.get("readOnly") is True:
            return f"claim {name} is bound to a volume whose {source} source is read-only"
    return None


def files_pod(claim: str, image: str, writable: bool, pull_policy: str = "IfNotPresent") -> JSONObject:
    """The short-lived pod: the claim at /claim, restricted Pod Security, the agent as its program."""
    security = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]}}
    container = {
        "name": CONTAINER, "image": image, "imagePullPolicy": pull_policy,
        "command": ["python3", "-c", BOOTSTRAP, "keep", str(LIFETIME_SECONDS)],
        "env": [{"name": AGENT_ENV, "value": Path(claim_agent.__file__).read_text()}],
        "securityContext": security,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": [{"name": "claim", "mountPath": CLAIM_ROOT, "readOnly": not writable},
                         {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "modeldeploy-files-",
                     "labels": {"app.kubernetes.io/name": "modeldeploy-files",
                                "app.kubernetes.io/managed-by": "kubectl-modeldeploy"},
                     "annotations": {"modeldeploy.dev/claim": claim}},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": LIFETIME_SECONDS,  # ends it even when the plugin is killed outright
            "terminationGracePeriodSeconds": DELETE_GRACE_SECONDS,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                "fsGroupChangePolicy": "OnRootMismatch",
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


def pod_state(pod: Mapping[str, Any]) -> tuple[str, str]:
    """("running" | "waiting" | "failed", why): where a starting pod stands, in the cluster's own words."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return "failed", f"it ended ({status.get('phase')}): {status.get('message') or status.get('reason') or ''}"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "running" in state:
            return "running", ""
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        if waiting.get("reason") in FATAL_WAITING:
            return "failed", f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
        if terminated:
            return "failed", f"its container exited ({terminated.get('reason')}): {terminated.get('message') or ''}"
        if waiting:
            return "waiting", f"{waiting.get('reason')}: {waiting.get('message') or 'container starting'}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") != "True":
            return "waiting", f"not scheduled: {condition.get('message') or condition.get('reason')}"
    return "waiting", "not scheduled yet"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_listing(claim: str, prefix: str | None, entries: Sequence[Mapping[str, Any]]) -> str:
    """PATH, SIZE (bytes) and SHA256 (of .onnx files) of each file, or a line saying there is none."""
    if not entries:
        where = f"under {prefix} " if prefix else ""
        return f"no files {where}on claim {claim}\n"
    rows = [[str(e["path"]), "?" if e.get("size") is None else str(e["size"]),
             str(e.get("sha256") or (f"(unreadable: {e['unreadable']})" if e.get("unreadable") else "-"))]
            for e in entries]
    return "\n".join(format_table(["PATH", "SIZE", "SHA256"], rows)) + "\n"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def refusal_message(event: Mapping[str, Any], claim: str, path: str, expected: str) -> str:
    """The pod's refusal as a message for people."""
    kind = event.get("kind")
    if kind == "digest":
        return (f"the file changed while it was uploaded: sha256 {expected} before, {event.get('sha256')} "
                f"received; nothing was written to claim {claim}")
    if kind == "exists":
        return (f"{path} already exists on claim {claim} with sha256 {event.get('sha256')}; "
                "--force replaces it")
    if kind == "permission":
        return (f"claim {claim} is not writable by UID {event.get('uid', UID)}: {event.get('message')} "
                "(make the volume's root writable for that user, or give it fsGroup support)")
    if kind == "truncated":
        return f"the upload was cut off: {event.get('message')}; nothing was written to claim {claim}"
    return f"the pod refused the upload: {event.get('message')}"


# ---------------------------------------------------------------------------------------------
# The API server: the pod, its exec streams.
# ---------------------------------------------------------------------------------------------


class TerminatedError(Exception):
    """SIGTERM or Ctrl-C: unwinds through the pod's deletion like any other error."""


@dataclass
class Exec:
    """One exec into the pod: JSON events, one a line, on stdout; bytes to stdin."""

    ws: Any
    what: str
    buffer: bytes = b""

    def event(self, timeout: float = REPLY_TIMEOUT_SECONDS) -> JSONObject:
        """The next line the pod's program printed (also when the stream closed right after it)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            still_open = self.ws.is_open()
            self.buffer += self.ws.read_stdout(timeout=1.0 if still_open else 0)
            if b"\n" in self.buffer:
                break
            if not still_open or time.monotonic() > deadline:
                errors = self.ws.read_channel(2) or b""
                detail = errors.decode(errors="replace").strip()[-500:] or (
                    "no answer" if still_open else "the stream closed")
                raise PluginError(f"{self.what}: the pod's program ended without a result: {detail}")
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            event: JSONObject = json.loads(line)
        except ValueError:
            raise PluginError(f"{self.what}: unexpected output from the pod: {line[:200]!r}") from None
        return event

    def send(self, path: Path, size: int, progress: Callable[[int], None]) -> int:
        """Up to SIZE bytes of PATH (fewer if it shrank, or the pod stopped reading); how many were sent."""
        from websocket import WebSocketException

        sent = 0
        with path.open("rb") as handle:
            while sent < size:
                chunk = handle.read(min(CHUNK, size - sent))
                if not chunk:
                    break
                try:
                    self.ws.write_stdin(chunk)
                    self.ws.update(timeout=0)  # take in what the pod says (a refusal) without waiting
                except (OSError, WebSocketException):
                    break  # the pod's program stopped reading: its last line says why
                sent += len(chunk)
                progress(sent)
        return sent

    def close(self) -> None:
        self.ws.close()


class ClaimPod:
    """The pod of one command: created, waited for, exec'd into, and always deleted."""

    def __init__(self, connection: Connection) -> None:
        from kubernetes import client

        self.namespace = connection.namespace
        self.api: Any = client.CoreV1Api(api_client(connection))  # dicts in, as the API takes them
        self.name: str | None = None

    def _fail(self, error: Exception, action: str) -> NoReturn:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if isinstance(error, ApiException):
            raise PluginError(f"cannot {action}: {error.status} {_api_message(error)}") from error
        if isinstance(error, HTTPError):
            raise PluginError(f"cannot reach the API server: {error}") from error
        raise error

    def claim(self, name: str) -> tuple[JSONObject, JSONObject | None]:
        """The claim and, when this user may read it, its bound PersistentVolume."""
        from kubernetes.client.exceptions import ApiException

        try:
            claim = self.api.api_client.sanitize_for_serialization(
                self.api.read_namespaced_persistent_volume_claim(name, self.namespace))
        except ApiException as error:
            if error.status == 404:
                raise PluginError(f'persistentvolumeclaim "{name}" not found in namespace "{self.namespace}"') \
                    from None
            self._fail(error, f'read persistentvolumeclaim "{name}"')
        except Exception as error:
            self._fail(error, f'read persistentvolumeclaim "{name}"')
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if not volume_name:
            return claim, None
        try:
            volume = self.api.api_client.sanitize_for_serialization(self.api.read_persistent_volume(volume_name))
        except ApiException:
            return claim, None  # a namespace user may not read PersistentVolumes: the claim's modes decide
        return claim, volume

    def start(self, manifest: JSONObject, timeout: float) -> str:
        try:
            created = self.api.create_namespaced_pod(self.namespace, manifest)
        except Exception as error:
            self._fail(error, f'create a pod in namespace "{self.namespace}"')
        self.name = str(created.metadata.name)
        deadline = time.monotonic() + timeout
        why = "not scheduled yet"
        while time.monotonic() < deadline:
            try:
                pod = self.api.api_client.sanitize_for_serialization(
                    self.api.read_namespaced_pod(self.name, self.namespace))
            except Exception as error:
                self._fail(error, f"read pod {self.name}")
            state, why = pod_state(pod)
            if state == "running":
                return self.name
            if state == "failed":
                raise PluginError(f"pod {self.name} (image {manifest['spec']['containers'][0]['image']}) "
                                  f"did not start: {why}")
            time.sleep(POLL_SECONDS)
        raise PluginError(f"pod {self.name} did not start within {timeout:g}s: {why}")

    def exec(self, command: list[str], what: str) -> Exec:
        from kubernetes.stream import stream

        try:
            ws = stream(self.api.connect_get_namespaced_pod_exec, self.name, self.namespace, container=CONTAINER,
                        command=command, stdin=True, stdout=True, stderr=True, tty=False,
                        _preload_content=False, binary=True)
        except Exception as error:
            raise PluginError(f"cannot exec into pod {self.name} (pods/exec): {error}") from error
        return Exec(ws, what)

    def delete(self) -> None:
        """Delete the pod and wait until it is gone (its agent removes any temporary file on the way)."""
        from kubernetes.client.exceptions import ApiException

        if self.name is None:
            return
        try:
            self.api.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=DELETE_GRACE_SECONDS)
            deadline = time.monotonic() + GONE_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                self.api.read_namespaced_pod(self.name, self.namespace)
                time.sleep(POLL_SECONDS)
            print(f"warning: pod {self.name} is still terminating", file=sys.stderr)
        except ApiException as error:
            if error.status != 404:
                print(f"warning: could not delete pod {self.name} ({error.status} {_api_message(error)}): "
                      f"kubectl delete pod {self.name} -n {self.namespace}", file=sys.stderr)
        except Exception as error:
            print(f"warning: could not delete pod {self.name} ({error}): "
                  f"kubectl delete pod {self.name} -n {self.namespace}", file=sys.stderr)


@contextmanager
def claim_pod(connection: Connection, claim: str, image: str, writable: bool, timeout: float) -> Iterator[ClaimPod]:
    """A running pod on the claim, deleted on every way out: errors, Ctrl-C, SIGTERM."""
    def interrupted(signum: int, frame: object) -> None:
        raise TerminatedError()

    previous = signal.signal(signal.SIGTERM, interrupted)
    pod = ClaimPod(connection)
    try:
        found, volume = pod.claim(claim)
        refusal = claim_refusal(found, volume) if writable else None
        if refusal:
            raise PluginError(refusal)
        pod.start(files_pod(claim, image, writable), timeout)
        yield pod
    except (KeyboardInterrupt, TerminatedError):
        raise PluginError("interrupted: the pod is removed, and an upload not confirmed writes nothing") from None
    finally:
        try:
            pod.delete()
        finally:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------


def progress_printer(name: str, size: int) -> Callable[[int], None]:
    """A progress line on a terminal's stderr; silent otherwise."""
    if not sys.stderr.isatty():
        return lambda sent: None
    shown = [-1]

    def show(sent: int) -> None:
        percent = 100 * sent // max(size, 1)
        if percent != shown[0]:
            shown[0] = percent
            end = "\n" if sent >= size else ""
            print(f"\ruploading {name}: {percent}% of {human_size(size)}", end=end, file=sys.stderr, flush=True)

    return show


def upload(args: argparse.Namespace, connection: Connection) -> str:
    source = location(args.pvc, args.path)
    file = Path(args.file)
    try:
        onnxfile.check_file(file)
    except onnxfile.NotOnnxError as error:
        raise PluginError(str(error)) from None
    size = file.stat().st_size
    expected = sha256_of(file)
    command = ["python3", "-c", BOOTSTRAP, "receive", CLAIM_ROOT, source.path, str(size), expected]
    with claim_pod(connection, source.pvc, args.image, True, args.timeout) as pod:
        stream = pod.exec(command + (["--force"] if args.force else []), f"upload to claim {source.pvc}")
        try:
            event = stream.event()
            if event.get("event") == "ready":
                sent = stream.send(file, size, progress_printer(file.name, size))
                if sent < size and file.stat().st_size < size:
                    raise PluginError(f"the file changed while it was uploaded: it is now shorter than its {size} "
                                      f"bytes; nothing was written to claim {source.pvc}")
                event = stream.event()
        finally:
            stream.close()
    if event.get("event") == "unchanged":
        print(f"{source.path} is already on claim {source.pvc} with this sha256: nothing sent", file=sys.stderr)
    elif event.get("event") == "done" and event.get("sha256") == expected:
        print(f"uploaded {file} to claim {source.pvc} as {source.path} ({size} bytes, sha256 verified in the pod)",
              file=sys.stderr)
    else:
        raise PluginError(refusal_message(event, source.pvc, source.path, expected))
    return model_snippet(source.pvc, source.path, expected)


def list_files(args: argparse.Namespace, connection: Connection) -> str:
    prefix = location(args.pvc, args.path).path if args.path else None
    command = ["python3", "-c", BOOTSTRAP, "list", CLAIM_ROOT, *([prefix] if prefix else [])]
    entries = []
    with claim_pod(connection, args.pvc, args.image, False, args.timeout) as pod:
        stream = pod.exec(command, f"list claim {args.pvc}")
        try:
            while (event := stream.event()).get("event") == "file":
                entries.append(event)
        finally:
            stream.close()
    if event.get("event") != "end":
        raise PluginError(f"cannot list claim {args.pvc}: {event.get('message')}")
    return format_listing(args.pvc, prefix, entries)


def run(args: argparse.Namespace, connection: Connection) -> str:
    return upload(args, connection) if args.command == "upload" else list_files(args, connection)


def add_commands(commands: Any, connection_options: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    """The `upload` and `ls` subcommands, on the plugin's parser."""
    upload_parser = commands.add_parser("upload", help="copy an ONNX file onto a claim, verified by sha256, and "
                                        "print its spec.model entry")
    upload_parser.add_argument("file", help="the local ONNX file")
    upload_parser.add_argument("--path", required=True, help="where on the claim (as spec.model.path)")
    upload_parser.add_argument("--force", action="store_true", help="replace a different file already at --path")
    ls_parser = commands.add_parser("ls", help="the files on a claim: path, size, sha256 of .onnx files")
    ls_parser.add_argument("--path", help="only under this folder or file")
    for parser in (upload_parser, ls_parser):
        parser.add_argument("--pvc", required=True, help="the PersistentVolumeClaim (as spec.model.pvc)")
        parser.add_argument("--image", default=default_image(),
                            help="image of the short-lived pod, with python3 (default: the serving image, %(default)s)")
        parser.add_argument("--timeout", type=float, default=120.0,
                            help="seconds the pod may take to be scheduled and start (default %(default)s)")
        connection_options(parser, False)
