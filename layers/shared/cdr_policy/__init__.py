"""CDR Policy Operator: Qualys CDR detections and threat-intel feeds to Tetragon and Cilium policies."""

__version__ = "0.1.0"
