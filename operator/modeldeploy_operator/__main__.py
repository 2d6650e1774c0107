"""`python -m modeldeploy_operator`: run the operator (kopf underneath).

Settings come from MODELDEPLOY_* environment variables (config.py; `python -m modeldeploy_operator.config`
lists them); the flags below override the most common ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid

import kopf

from modeldeploy_operator.assembly import Operator, build
from modeldeploy_operator.config import OperatorConfig, from_env
from modeldeploy_operator.kube import Kube

log = logging.getLogger("modeldeploy_operator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m modeldeploy_operator", description=__doc__)
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch only this namespace (repeatable); default: MODELDEPLOY_NAMESPACES or all")
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster")
    parser.add_argument("--workers", type=int, help="reconcile worker threads (MODELDEPLOY_WORKERS, default 4)")
    parser.add_argument("--liveness", help="liveness endpoint URL (MODELDEPLOY_LIVENESS_ENDPOINT, "
                        "default http://0.0.0.0:8081/healthz; empty disables)")
    parser.add_argument("--metrics-port", type=int, help="port of the operator's own /metrics "
                        "(MODELDEPLOY_METRICS_PORT, default 8080; 0 disables)")
    parser.add_argument("--no-leader-election", action="store_true",
                        help="act without holding the lease (a single replica, or local development)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> OperatorConfig:
    """The environment's settings with the flags over them; ValueError names what is wrong."""
    config = from_env()
    overrides: dict[str, object] = {}
    if args.all_namespaces:
        overrides["namespaces"] = ()
    elif args.namespace:
        overrides["namespaces"] = tuple(args.namespace)
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError("--workers must be at least 1")
        overrides["workers"] = args.workers
    if args.liveness is not None:
        overrides["liveness_endpoint"] = args.liveness or None
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ValueError("--metrics-port must be between 0 and 65535")
        overrides["metrics_port"] = args.metrics_port
    if args.no_leader_election:
        overrides["leader_election"] = False
    return config.model_copy(update=overrides) if overrides else config


def configure_logging(config: OperatorConfig, verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, config.log_level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)


def serve_metrics(operator: Operator) -> None:
    """Reconciling matters more than being observed: a port that cannot be bound is logged, not fatal."""
    config = operator.config
    if not config.metrics_port:
        return
    try:
        operator.metrics.serve(config.metrics_port, config.metrics_address)
    except OSError as error:
        log.error("cannot serve metrics on %s:%d: %s", config.metrics_address, config.metrics_port, error)


def run(operator: Operator, identity: str) -> int:
    """Run under kopf until stopped; 1 when the lease was lost (the Deployment restarts the process)."""
    config = operator.config
    from modeldeploy_operator import handlers  # noqa: F401 - registers the kopf handlers

    log.info("starting as %s: %s, %d workers, leader election %s", identity,
             f"namespaces {','.join(config.namespaces)}" if config.namespaces else "cluster-wide", config.workers,
             f"on lease {config.lease_namespace}/{config.lease_name}" if config.leader_election else "off")
    kopf.run(
        standalone=True,  # no kopf peering: the Lease decides who acts
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint,
        memo=operator,
        stop_flag=operator.stop_flag,
    )
    return 1 if operator.lost.is_set() else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = settings_from(args)
    except ValueError as error:
        print(f"modeldeploy-operator: {error}", file=sys.stderr)
        return 2
    configure_logging(config, args.verbose)
    identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        api = Kube.connect(pool_size=config.workers + 4, timeout=config.request_timeout_seconds)
    except Exception as error:  # no in-cluster service account and no usable kubeconfig
        print(f"modeldeploy-operator: no Kubernetes credentials: {error}", file=sys.stderr)
        return 2
    operator = build(api, config, identity)
    serve_metrics(operator)
    try:
        return run(operator, identity)
    finally:
        api.close()


if __name__ == "__main__":
    sys.exit(main())
