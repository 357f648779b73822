"""The operator side (agent.operator.plan_builds: the class builder and `fleet build`)."""
