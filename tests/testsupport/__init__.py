"""Helpers shared by the test suites and benchmarks: the operator harness, real-pod helpers, ONNX models
built from code, the Argo CD Lua runner, JSON merge patch."""
