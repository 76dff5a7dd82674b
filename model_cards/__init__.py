"""Model cards of zoo variants: build them (card), plot accuracy vs FLOPs and vs latency (plot), check and write them
(validate)."""
from zoo.model_cards.card import CardPlot, base_card, metric_spec, result_name, variant_card
from zoo.model_cards.plot import plot_accuracy_vs_flops, plot_accuracy_vs_latency, plot_metric_vs_metric
from zoo.model_cards.validate import parse_card, validate_card, write_card

__all__ = [
    "CardPlot",
    "base_card",
    "metric_spec",
    "parse_card",
    "plot_accuracy_vs_flops",
    "plot_accuracy_vs_latency",
    "plot_metric_vs_metric",
    "result_name",
    "validate_card",
    "variant_card",
    "write_card",
]
