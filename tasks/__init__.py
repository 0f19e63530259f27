"""cronloop's standard tasks (the jobs iTop users rely on cron.php for).

Each module uses only the public API (`worker.task`, `worker.TaskContext`) and its own
tables, exactly as an extension would. Importing this package registers them all.
"""
