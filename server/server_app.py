"""Flower ServerApp (main lands with the federation issue)."""

from flwr.serverapp import ServerApp

app = ServerApp()
