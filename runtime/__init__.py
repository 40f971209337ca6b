"""nnspec runtime: the CLI, inference runners, benchmarking and deployment helpers."""
