"""The MC-BERT family and its masked-LM BERT baseline: entries (`entries`), encoders and heads
(`model`), the cloze / fill-mask / text-classification tasks (`task`), and the Python-documentation
text they train on (`data`)."""
