"""KFP pipelines (wiring only) and the launcher that runs them locally or on a cluster."""
