"""Policy bundles: files with sha256 digests, a signed manifest, publishing to channels."""
