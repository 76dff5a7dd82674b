"""The invertible family: IRN (invertible image rescaling) and ILC (invertible lossy compression)
(`model`), their entries (`entries`), the image-rescaling and image-compression tasks (`task`), and
patches of scikit-image's bundled photographs (`data`)."""
