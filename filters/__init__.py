"""Bank and pipeline files shipped with cnn (installed as the cnn_cli.filters package data)."""
