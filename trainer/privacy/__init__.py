"""Privacy primitives every stage shares: keyed pseudonyms for user ids, differential-privacy
noise for aggregates of shoppers' behaviour, and DP-SGD fine-tuning (Opacus)."""
