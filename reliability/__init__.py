"""The reliability suite (`make test-reliability`): the service's promises under crashes,
database outages, bad input, long runs and shutdowns, each with a verdict and its figures."""
