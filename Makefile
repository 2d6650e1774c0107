# modeldeploy — one entry point for people and CI.
#   make test      lint + unit + integration tests on a real local control plane (sets everything up)
#   make demo      the main job end to end on the local control plane
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv lock version binaries lint generate test unit integration cluster-up cluster-down bench demo e2e-kind clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

# The dev venv installs the locked set (locks/dev.txt, every wheel checked by hash), then the project
# itself editable without dependencies; a lock that no longer matches pyproject.toml stops here.
$(VENV)/.installed: pyproject.toml uv.lock locks/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r locks/dev.txt
	@# Before the project itself: a dependency added to pyproject.toml without `make lock` is named here.
	$(PY) hack/locks.py check
	$(PY) -m pip install --quiet --no-deps -e .
	@# The harness and the test helpers are importable in the venv (tests, benchmarks, demo): no path hacks.
	printf '%s\n' "$(CURDIR)/hack" "$(CURDIR)/tests" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/modeldeploy-dev.pth"
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed ## virtual env with the operator, the server and the dev tools, from locks/dev.txt

lock: ## regenerate uv.lock and locks/*.txt from pyproject.toml (needs PyPI; UPGRADE=1 moves every pin to the newest allowed)
	$(PYTHON) hack/locks.py write $(if $(UPGRADE),--upgrade)

version: venv ## write VERSION=X.Y.Z into pyproject.toml and every copy (chart, server, operator defaults), then relock
	@test -n "$(VERSION)" || { echo "usage: make version VERSION=X.Y.Z" >&2; exit 2; }
	$(PY) hack/set_version.py $(VERSION)
	$(PYTHON) hack/locks.py write

binaries: venv ## build kube-apiserver, etcd, kubectl, helm, kwok, ... (and, as root with containerd, the real node's, its metrics stack, Envoy Gateway and the images) into ~/.cache/modeldeploy
	bash hack/build-binaries.sh $$( [ "$$(id -u)" = 0 ] && command -v containerd >/dev/null && echo --with-node )
	@# Built here, not inside a test fixture: cold, they take longer than a test's time limit.
	@if [ "$$(id -u)" = 0 ] && command -v containerd >/dev/null; then $(PY) hack/prepare_real_node.py; fi

lint: venv ## ruff, mypy, hadolint, shellcheck and actionlint (the generated files are checked by tests)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile.server Dockerfile.operator
	$(BIN)/shellcheck --external-sources --source-path=SCRIPTDIR .ci/run hack/*.sh
	@# actionlint also runs shellcheck on every workflow step's script.
	"$$(bash hack/build-actionlint.sh)" -no-color -shellcheck $(BIN)/shellcheck

generate: venv ## regenerate the CRD (and the chart's copy) from the spec model, the Grafana dashboard and the gRPC stubs
	$(PY) -m modeldeploy_operator.crd --write
	cp crds/modeldeployments.yaml charts/modeldeploy/crds/modeldeployments.yaml
	$(PY) hack/make_dashboard.py
	$(PY) hack/make_grpc_stubs.py

test: venv binaries lint ## everything: lint, unit, server over HTTP, integration on the real control plane
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv ## only the tests that need no control plane
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

integration: venv binaries ## only the tests on the control plane (USE_EXISTING_CLUSTER=1 for kind)
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

cluster-up: venv binaries ## start a local control plane in the background (REAL_NODE=1: with a real node); prints the KUBECONFIG
	@$(PY) hack/localcluster.py up $(if $(REAL_NODE),--real-node)

cluster-down: ## stop it and remove its files
	@$(PY) hack/localcluster.py down

bench: venv binaries ## benchmarks, side by side in one run (~30 min on 2 cores); SERVER_BENCH_ARGS=--quick / GRPC_BENCH_ARGS=--quick for smoke runs of the server parts
	$(PY) benchmarks/control_plane/bench_cluster.py
	$(PY) benchmarks/server/bench_server.py $(SERVER_BENCH_ARGS)
	$(PY) benchmarks/server/bench_grpc.py $(GRPC_BENCH_ARGS)
	$(PY) benchmarks/operator/bench_operator.py
	$(PY) benchmarks/operator/bench_rollouts.py
	@if [ "$$(id -u)" = 0 ] && command -v containerd >/dev/null; then \
		$(PY) benchmarks/realnode/bench_real_node.py && \
		$(PY) benchmarks/routing/bench_gateway.py && \
		$(PY) benchmarks/autoscaling/bench_autoscaling.py; \
	else echo "bench_real_node, bench_gateway, bench_autoscaling: skipped (a real node needs root and the packages .ci/run installs)"; fi

demo: venv binaries ## local control plane + operator + a canary ModelDeployment + a v2 inference answer
	$(PY) hack/demo.py

e2e-kind: venv ## the same on kind with real images (needs Docker and kind; see hack/e2e-kind.sh)
	bash hack/e2e-kind.sh

clean: cluster-down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
