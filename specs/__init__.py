"""The bundled spec zoo (YAML files), shipped as package data."""
