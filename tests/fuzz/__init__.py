"""Fuzzing the decode path: image builders, the seed corpus and the atheris harness."""
