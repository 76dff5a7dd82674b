"""Model cards of zoo variants: build them (card), plot accuracy vs FLOPs (plot), check and write them
(validate)."""
from zoo.model_cards.card import base_card, metric_spec, result_name, variant_card
from zoo.model_cards.plot import plot_accuracy_vs_flops
from zoo.model_cards.validate import parse_card, validate_card, write_card

__all__ = [
    "base_card",
    "metric_spec",
    "parse_card",
    "plot_accuracy_vs_flops",
    "result_name",
    "validate_card",
    "variant_card",
    "write_card",
]
