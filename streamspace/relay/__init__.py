"""The VNC path: browser leg <-> control plane <-> agent tunnel leg, byte for byte."""
