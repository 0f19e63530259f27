"""The embedded HTTP server: /metrics, /healthz, /readyz, the web API and the status page.

Off unless `http_listen` is set. `server` binds and stops the listener (aiohttp's server,
in the worker's own loop), `app` routes requests, `metrics` owns the Prometheus families,
`table` reads the task table periodically through the store, `auth` checks the bearer
token, `page` renders the status page. It never knows SQL text nor how a run is driven.
"""
