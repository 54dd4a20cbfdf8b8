"""Shoppers' privacy in serving: query-text scrubbing, consent, erasure and retention of the
event and impression logs (pseudonymous ids themselves are trainer.privacy.pseudonym)."""
