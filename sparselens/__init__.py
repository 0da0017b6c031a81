"""sparselens: measure how DeepSeek-style sparse attention works, and make it cheaper."""
