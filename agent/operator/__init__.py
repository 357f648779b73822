"""The operator's side of the fleet: staged rollouts, the Prometheus exporter, and what they read."""
