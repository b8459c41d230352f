"""Speed and memory measurements of the mixers."""
