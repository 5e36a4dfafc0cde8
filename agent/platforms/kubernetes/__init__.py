"""PLATFORM=kubernetes: sessions as Deployment + Service (+ home PVC) in NAMESPACE.

Modules: cluster (config and credentials), client (treq REST and watches), reflector
(list+watch caches), spec/objects/names (all Kubernetes JSON), podstatus (reading pods),
portforward (the API server's pod port-forward as an endpoint), driver. See
docs/kubernetes.md.
"""

from __future__ import annotations

from pathlib import Path

from agent.platforms.base import Capacity


def build_driver(reactor, options, state_dir: Path, capacity: Capacity):
    """The driver from `twistd agent` options (see agent/config.py, KUBE_* settings)."""
    from agent.platforms.kubernetes import cluster
    from agent.platforms.kubernetes.client import KubeClient
    from agent.platforms.kubernetes.driver import PORT_FORWARD, SERVICE, KubernetesDriver
    from streamspace_common.settings import ConfigError

    try:
        access = cluster.load(
            reactor, kubeconfig=options["kubeconfig"] or None,
            context=options["kube_context"] or None, mode=options["kube_config_source"],
            account_dir=options["kube_service_account_dir"],
            temp_dir=Path(state_dir) / "kube")
    except cluster.ClusterConfigError as e:
        raise ConfigError([f"Kubernetes: {e}"], "agent") from None
    mode = options["kube_vnc_mode"]
    if mode == "auto":
        mode = SERVICE if access.in_cluster else PORT_FORWARD
    client = KubeClient(reactor, access, request_timeout=options["kube_request_timeout"])
    return KubernetesDriver(
        reactor, client, access, capacity, namespace=options["namespace"],
        agent_id=options["agent_id"], vnc_mode=mode,
        storage_class=options["kube_storage_class"], home_size=options["kube_home_size"],
        orphan_grace=options["kube_orphan_grace"],
        watch_timeout=max(1, int(options["kube_watch_timeout"])))
