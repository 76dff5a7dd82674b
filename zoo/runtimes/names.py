"""The runtimes a zoo model runs in, by name (no torch import: options and the CLI validate with it)."""
RUNTIMES = ("torch", "onnxruntime", "openvino")
GRAPH_RUNTIMES = RUNTIMES[1:]  # the ones that run an exported graph
