"""How the benchmark drives each scheduler: cronloop in this process, cronloop as a
fleet of worker processes, APScheduler as users deploy it. Scenarios build on these."""
