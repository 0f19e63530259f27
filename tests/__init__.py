"""cronloop's tests. A package so that `tests.support` is importable by the test suites
and, from the checkout's root, by `python -m bench`."""
