"""What the acceptance tests, the chaos tests and the bench share, and nothing else.

- `env`: the scrubbed base environment of every `cronloop` subprocess, and the console
  script's path.
- `mariadb`: the one MariaDB gate (skip without `CRONLOOP_TEST_MYSQL_URL`, fail when
  `CRONLOOP_REQUIRE_MARIADB=1`), server URLs, scratch databases.
- `worker`: the one wrapper around a background `cronloop run` process (its log read
  line by line, waits on events with a timeout, signals, CPU time).
- `cli`: one-shot `cronloop` commands (`migrate`, `tasks`) and their results.
- `sandbox`: a real systemd (`shared/tools/systemd-sandbox`) and its gate (skip, or fail
  under `SYSTEMD_SANDBOX_REQUIRED=1`).
- `http`: a worker's HTTP endpoints from the outside (a free port, GET/POST over TCP or
  a unix socket, the browser gate: skip, or fail under `CRONLOOP_REQUIRE_BROWSER=1`).
- `galera`: reserved for the Galera cluster gate and helpers.

It imports neither pytest at module level (the bench runs without it) nor anything of
cronloop's internals: it drives the product from the outside, as an operator would.
"""
