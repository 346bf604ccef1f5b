"""The hub's external APIs, one package per face."""
