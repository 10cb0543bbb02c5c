"""TFLite / LiteRT backend."""
