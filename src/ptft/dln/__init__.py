"""Diagonal linear networks: model, teachers, theory (implicit bias), replica theory."""
