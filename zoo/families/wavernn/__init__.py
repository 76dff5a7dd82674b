"""The WaveRNN family: WaveRNN, Sparse WaveRNN (block-pruned variants) and Subscale WaveRNN (`model`),
their entries (`entries`), the vocoding task (`task`) and espeak-ng speech (`data`)."""
