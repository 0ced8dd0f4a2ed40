"""The user-level steps, one module each, in pipeline order: export (and simplify), quantize, engine, verify,
benchmark, inspect, demo. `danet_deploy.api` is their public face."""
