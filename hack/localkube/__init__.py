"""The local Kubernetes cluster of the tests, benchmarks and demo, built from source on this machine.

Modules: ``pki`` (certificates, kubeconfigs), ``processes`` (start/stop children), ``controlplane``
(etcd, API server, controllers, kwok; the ``Cluster`` handle), ``network`` (a network namespace per
real node), ``node`` (containerd, kubelet, kube-proxy, CoreDNS), ``images`` (base and project images
built with Docker, loaded into the node), ``storage`` (local-path volumes for claims), ``session``
(the context managers and the ``up``/``down``/``status`` commands).
"""
