"""Bitbucket webhook receiver that refreshes Kargo Warehouses and Promotions."""

__version__ = "0.1.0"
