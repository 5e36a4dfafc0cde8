"""Reading pod and Deployment status as the API reports it, and loading cluster access
(kubeconfig, in-cluster) the way every client does, without ever skipping TLS checks."""

from __future__ import annotations

import base64

import pytest
import yaml
from twisted.internet.task import Clock

from agent.platforms.kubernetes import cluster, podstatus

RUNNING = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]},
           "status": {"phase": "Running", "podIP": "10.0.0.5",
                      "containerStatuses": [{"name": "c", "ready": True,
                                             "state": {"running": {}}}]}}


def _with(**status):
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]},
           "status": {"phase": "Pending", **status}}
    return pod


def test_ready_means_running_with_an_ip_all_containers_ready_and_not_deleting():
    assert podstatus.pod_ready(RUNNING)
    deleting = {**RUNNING, "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert not podstatus.pod_ready(deleting)
    no_ip = {**RUNNING, "status": {**RUNNING["status"], "podIP": ""}}
    assert not podstatus.pod_ready(no_ip)


def test_failure_reasons_carry_the_clusters_message():
    pull = _with(containerStatuses=[{"name": "c", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "i:1"'}}}])
    event = {"reason": "Failed", "message": 'Failed to pull image "i:1": manifest unknown'}
    assert podstatus.pod_failure(pull, [event]) == (
        'the image i:1 cannot be pulled (ImagePullBackOff): Failed to pull image "i:1": '
        "manifest unknown")
    unschedulable = _with(conditions=[{"type": "PodScheduled", "status": "False",
                                       "reason": "Unschedulable",
                                       "message": "0/3 nodes are available: 3 Insufficient cpu."}])
    assert "3 Insufficient cpu" in podstatus.pod_failure(unschedulable)
    crash = _with(containerStatuses=[{"name": "c", "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    assert podstatus.pod_failure(crash) == (
        "the session's container keeps crashing (exit code 137, OOMKilled): back-off 10s")
    # "Error" is the kubelet's word for any non-zero exit: the sentence gives the code
    crash["status"]["containerStatuses"][0]["lastState"]["terminated"] = {
        "exitCode": 1, "reason": "Error", "message": "Xvnc: cannot open display"}
    assert podstatus.pod_failure(crash) == (
        "the session's container keeps crashing (exit code 1): back-off 10s; last message: "
        "Xvnc: cannot open display")
    assert podstatus.pod_failure(_with(containerStatuses=[{"name": "c", "state": {
        "waiting": {"reason": "ContainerCreating"}}}])) is None
    dep = {"status": {"conditions": [{"type": "ReplicaFailure", "status": "True",
                                      "message": "exceeded quota: q"}]}}
    assert "exceeded quota: q" in podstatus.deployment_failure(dep)


def _kubeconfig(tmp_path, cluster_extra: dict, user: dict) -> str:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.1.2.3:6443",
                                               **cluster_extra}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_kubeconfig_gives_server_ca_and_token(tmp_path):
    path = _kubeconfig(tmp_path, {"certificate-authority-data":
                                  base64.b64encode(PEM).decode()}, {"token": "s3cret"})
    access = cluster.from_kubeconfig(Clock(), path, "b", tmp_path / "scratch")
    assert (access.host, access.port, access.ca_pem) == ("10.1.2.3", 6443, PEM)
    assert access.authorization() == "Bearer s3cret"
    assert not access.in_cluster


def test_insecure_kubeconfigs_and_plain_http_are_refused(tmp_path):
    path = _kubeconfig(tmp_path, {"insecure-skip-tls-verify": True}, {"token": "t"})
    with pytest.raises(cluster.ClusterConfigError, match="insecure-skip-tls-verify"):
        cluster.from_kubeconfig(Clock(), path, None, tmp_path / "scratch")
    with pytest.raises(cluster.ClusterConfigError, match="refusing plain http"):
        cluster.ClusterAccess(server="http://10.0.0.1:8080")
    assert cluster.ClusterAccess(server="http://127.0.0.1:8001").port == 8001  # kubectl proxy
    with pytest.raises(cluster.ClusterConfigError, match="no kubeconfig"):
        cluster.from_kubeconfig(Clock(), str(tmp_path / "missing"), None)


def test_in_cluster_token_is_reread_as_it_rotates(tmp_path):
    (tmp_path / "token").write_text("first")
    (tmp_path / "ca.crt").write_bytes(PEM)
    clock = Clock()
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = cluster.load(clock, kubeconfig=None, context=None, mode="auto", environ=env,
                          account_dir=str(tmp_path))
    assert access.in_cluster and access.server == "https://10.96.0.1:443"
    assert access.authorization() == "Bearer first"
    (tmp_path / "token").write_text("second")
    assert access.authorization() == "Bearer first"  # not re-read on every request
    clock.advance(cluster.TOKEN_REREAD)
    assert access.authorization() == "Bearer second"
    with pytest.raises(cluster.ClusterConfigError, match="in-cluster"):
        cluster.load(clock, kubeconfig=None, context=None, mode="in-cluster", environ={},
                     account_dir=str(tmp_path))
