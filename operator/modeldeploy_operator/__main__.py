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
import threading
import uuid

import kopf

from modeldeploy_operator import config as configs
from modeldeploy_operator.controller import Controller, Elector, Runtime
from modeldeploy_operator.kube import Kube
from modeldeploy_operator.leader import LeaderElector, NoElection


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = configs.from_env()
    except ValueError as error:
        print(f"modeldeploy-operator: {error}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if args.all_namespaces:
        overrides["namespaces"] = ()
    elif args.namespace:
        overrides["namespaces"] = tuple(args.namespace)
    if args.workers is not None:
        if args.workers < 1:
            print("modeldeploy-operator: --workers must be at least 1", file=sys.stderr)
            return 2
        overrides["workers"] = args.workers
    if args.liveness is not None:
        overrides["liveness_endpoint"] = args.liveness or None
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            print("modeldeploy-operator: --metrics-port must be between 0 and 65535", file=sys.stderr)
            return 2
        overrides["metrics_port"] = args.metrics_port
    if args.no_leader_election:
        overrides["leader_election"] = False
    if overrides:
        config = config.model_copy(update=overrides)

    level = logging.DEBUG if args.verbose else getattr(logging, config.log_level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kopf").setLevel(logging.WARNING)

    identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        api = Kube.connect(pool_size=config.workers + 4, timeout=config.request_timeout_seconds)
    except Exception as error:  # no in-cluster service account and no usable kubeconfig
        print(f"modeldeploy-operator: no Kubernetes credentials: {error}", file=sys.stderr)
        return 2
    controller = Controller(api, config, identity)
    if config.metrics_port:
        try:
            controller.metrics.serve(config.metrics_port, config.metrics_address)
        except OSError as error:  # reconciling matters more than being observed: say so and go on
            logging.getLogger(__name__).error("cannot serve metrics on %s:%d: %s", config.metrics_address,
                                              config.metrics_port, error)
    stop_flag = threading.Event()
    lost = threading.Event()

    def started_leading() -> None:
        controller.leading.set()
        controller.enqueue_all()

    def stopped_leading() -> None:
        controller.leading.clear()
        lost.set()
        stop_flag.set()

    elector: Elector = NoElection(started_leading)
    if config.leader_election:
        elector = LeaderElector(
            api, config.lease_namespace, config.lease_name, identity,
            config.lease_duration_seconds, config.renew_deadline_seconds, config.retry_period_seconds,
            on_started=started_leading, on_stopped=stopped_leading,
        )

    from modeldeploy_operator import handlers  # noqa: F401 - registers the kopf handlers

    logging.getLogger(__name__).info(
        "starting as %s: %s, %d workers, leader election %s", identity,
        f"namespaces {','.join(config.namespaces)}" if config.namespaces else "cluster-wide",
        config.workers, f"on lease {config.lease_namespace}/{config.lease_name}" if config.leader_election else "off",
    )
    kopf.run(
        standalone=True,  # no kopf peering: the Lease above decides who acts
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint,
        memo=Runtime(controller=controller, elector=elector, config=config, stop_flag=stop_flag),
        stop_flag=stop_flag,
    )
    api.close()
    return 1 if lost.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
