"""Agents: the hub they connect to, the command queue, scheduling onto them."""
