"""The gpt2ft command line."""
