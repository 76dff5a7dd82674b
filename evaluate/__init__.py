"""Measuring a model variant: FLOPs (dense and sparse-aware), parameters, latency, accuracy, Pareto front,
and the machine it was measured on."""
from zoo.evaluate.flops import FlopReport, count_flops
from zoo.evaluate.latency import LatencyReport, measure_latency
from zoo.evaluate.machine import MachineInfo, current_machine
from zoo.evaluate.metrics import AVERAGES, ClassificationResult, evaluate_classifier
from zoo.evaluate.params import ParamCount, count_parameters
from zoo.evaluate.pareto import pareto_front
from zoo.evaluate.report import LayerFlops, VariantReport

__all__ = [
    "AVERAGES",
    "ClassificationResult",
    "FlopReport",
    "LatencyReport",
    "LayerFlops",
    "MachineInfo",
    "ParamCount",
    "VariantReport",
    "count_flops",
    "count_parameters",
    "current_machine",
    "evaluate_classifier",
    "measure_latency",
    "pareto_front",
]
