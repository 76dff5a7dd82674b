"""Hugging Face transformers sequence classifiers read from a Hub repo (`entries`: the repo reader),
built from the repo's config.json (`model`), with the repo's own tokenizer (`data`)."""
