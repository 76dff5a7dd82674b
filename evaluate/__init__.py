"""Measuring a model variant: FLOPs (dense and sparse-aware), parameters, latency, accuracy, Pareto front."""
from zoo.evaluate.flops import FlopReport, count_flops
from zoo.evaluate.latency import LatencyReport, measure_latency
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
    "ParamCount",
    "VariantReport",
    "count_flops",
    "count_parameters",
    "evaluate_classifier",
    "measure_latency",
    "pareto_front",
]
