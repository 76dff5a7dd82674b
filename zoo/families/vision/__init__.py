"""The vision family: timm image classifiers (`entries`), built by `model`, trained and scored by the
image-classification `task`, on the digits and ImageNet-style folder `data` sets."""
