"""Platform drivers: where sessions actually run (local processes, Kubernetes...)."""
