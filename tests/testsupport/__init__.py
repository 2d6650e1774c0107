"""Helpers shared by the test suites: the operator harness, the Argo CD Lua runner, JSON merge patch."""
