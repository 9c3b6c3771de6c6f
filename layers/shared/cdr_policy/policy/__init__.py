"""Policy compilation: indicator sets and behaviours to Tetragon and Cilium objects, and the checker."""
