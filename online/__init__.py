"""The online (slow) loop: model servers, the user-sticky A/B router, the event collector, the traffic
driver for the simulated world, a local Prometheus with a PromQL reader, and the local rollout runner.

server.py (POST /rank) · assignment.py (pure hashing) · router.py · collector.py + aggregate.py (pure
per-user sums) · traffic.py · prometheus.py · rollout.py (run_rollout) · cli.py (serve, route, rollout).
"""
