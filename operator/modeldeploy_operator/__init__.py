"""modeldeploy operator: reconciles ModelDeployment resources into serving workloads."""
