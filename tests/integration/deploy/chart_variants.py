"""The chart's value variants the deploy tests render (helm lint, kubernetes-validate and
the assertions of test_helm_chart.py and test_helm_security.py)."""

from __future__ import annotations

from tests.support.chart import NAMESPACE

PROXIES = "api.trustedProxies=10.244.0.0/16"

VARIANTS = {
    "default": [],
    "external-database": ["database.host=db.example.com", "database.password=s3cret-db"],
    "external-database-existing-secret": ["database.host=db.example.com",
                                          "database.existingSecret=corp-db",
                                          "database.existingSecretKey=pw"],
    "agent-disabled": ["k8sAgent.enabled=false"],
    "ingress": ["ingress.enabled=true", "ingress.host=desk.example.org",
                "ingress.className=nginx", "ingress.tls.enabled=true", PROXIES],
    "custom-images": ["api.image.registry=ghcr.io/acme", "api.image.tag=1.2.3",
                      "api.image.repository=ss/cp", "k8sAgent.image.registry=ghcr.io/acme",
                      "k8sAgent.image.repository=ss/agent", "k8sAgent.image.tag=1.2.3",
                      "api.image.pullPolicy=Always"],
    "two-replicas": ["api.replicas=2", "api.podDisruptionBudget.enabled=true"],
    "service-monitor": ["metrics.serviceMonitor.enabled=true", "metrics.token.enabled=true",
                        "api.service.type=LoadBalancer"],
    "metrics-existing-secret": ["metrics.serviceMonitor.enabled=true",
                                "metrics.token.enabled=true",
                                "metrics.token.existingSecret=corp-metrics",
                                "metrics.token.existingSecretKey=scrape"],
    "sessions-namespace": ["k8sAgent.config.namespace=sessions"],
    "release-namespace": [f"k8sAgent.config.namespace={NAMESPACE}",
                          "k8sAgent.allowReleaseNamespace=true"],
    "no-network-policies": ["networkPolicy.enabled=false"],
}
