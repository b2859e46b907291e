"""loradeck's terminal app. Never imports torch or the Hugging Face stack."""
