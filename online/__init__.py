"""The online (slow) loop: model servers, the user-sticky A/B router, the event collector, the traffic
driver for the simulated world, and a local Prometheus with a PromQL reader (a Rollout runs through the
operator's reconcile core: operator/platform/local.py locally).

server.py (POST /rank) · assignment.py (pure hashing) · router.py · collector.py + aggregate.py (pure
per-user sums) · traffic.py · prometheus.py · cli.py (serve, route).
"""
