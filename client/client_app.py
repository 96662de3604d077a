"""Flower ClientApp (handlers land with the federation issue)."""

from flwr.clientapp import ClientApp

app = ClientApp()
