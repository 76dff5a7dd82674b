"""The translation family: a WMT-style Transformer and MAT (`model`), their entries (`entries`), the
translation task with SacreBLEU (`task`) and the generated English -> German corpus (`data`)."""
